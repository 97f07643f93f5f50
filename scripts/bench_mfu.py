#!/usr/bin/env python
"""Training throughput and model FLOPs utilization (MFU) of MLMModel, meant for one GPU.

BERT-base size by default (12 layers, hidden 768, 12 heads, FFN 3072, vocab 32768), bf16
autocast, fused AdamW, optionally torch.compile; sequence lengths 128 and 512 at a fixed
number of tokens per batch. Batches are synthetic (random ids, 15% of positions labelled):
speed does not depend on the text, and generating them on the device keeps the host out
of the measurement.

    MFU = tokens/s x model.flops_per_token(seq) / peak
    (peak: dense bf16 989e12 for an H100 SXM; --peak-flops for other parts)

`flops_per_token` counts the work the model really does: the head only on the masked
fraction of tokens (sparse prediction). `dense_head_equiv_mfu` counts the head on every
token as well, which is what a dense-head model would have to do for the same result.

    python scripts/bench_mfu.py                      # H100, eager
    python scripts/bench_mfu.py --compile            # torch.compile(dynamic=True)
    python scripts/bench_mfu.py --device cpu --layers 2 --hidden 64 --heads 2 --ffn 256 \\
        --vocab 1024 --seq 32 64 --batch-tokens 512 --steps 3 --warmup 1   # tiny CPU check
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mlm.config import ModelConfig  # noqa: E402
from mlm.model import MLMModel  # noqa: E402

SPECIAL = [0, 1, 2, 3, 4]  # [PAD] [UNK] [CLS] [SEP] [MASK] of a BERT-style tokenizer
MASK_ID = 4


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--ffn", type=int, default=3072)
    p.add_argument("--vocab", type=int, default=32768)
    p.add_argument("--norm", default="pre", choices=("pre", "post"))
    p.add_argument("--position", default="learned", choices=("learned", "rotary"))
    p.add_argument("--activation", default="gelu", choices=("gelu", "geglu"))
    p.add_argument("--seq", type=int, nargs="+", default=[128, 512])
    p.add_argument("--batch-tokens", type=int, default=65536, help="tokens per batch (batch = this / seq)")
    p.add_argument("--mask-prob", type=float, default=0.15)
    p.add_argument("--pad-frac", type=float, default=0.0,
                   help="mean fraction of each row that is padding (exercises the unpadded path); 0: packed")
    p.add_argument("--precision", default="bf16", choices=("bf16", "fp32"))
    p.add_argument("--compile", action="store_true", help="torch.compile(model, dynamic=True)")
    p.add_argument("--capture-dynamic", action="store_true",
                   help="with --compile: trace nonzero() into the graph (no graph break at the selections)")
    p.add_argument("--steps", type=int, default=30, help="timed steps per sequence length")
    p.add_argument("--warmup", type=int, default=8, help="untimed steps first (compilation happens here)")
    p.add_argument("--peak-flops", type=float, default=989e12, help="dense peak FLOP/s of the device")
    p.add_argument("--threads", type=int, default=0, help="CPU threads; 0: torch's default")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the JSON result here")
    return p.parse_args(argv)


def make_batches(n: int, batch: int, seq: int, args, device: torch.device) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator(device=device).manual_seed(args.seed + seq)
    out = []
    for _ in range(n):
        ids = torch.randint(len(SPECIAL), args.vocab, (batch, seq), device=device, generator=g)
        picked = torch.rand(batch, seq, device=device, generator=g) < args.mask_prob
        mask = None
        if args.pad_frac > 0:
            lengths = seq - (torch.rand(batch, device=device, generator=g) * 2 * args.pad_frac * seq).long()
            real = torch.arange(seq, device=device) < lengths.clamp(min=1, max=seq)[:, None]
            ids = torch.where(real, ids, torch.zeros_like(ids))
            picked &= real
            mask = real.long()
        labels = torch.where(picked, ids, torch.full_like(ids, -100))
        ids = torch.where(picked, torch.full_like(ids, MASK_ID), ids)
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_seq(seq: int, args, device: torch.device) -> dict[str, object]:
    torch.manual_seed(args.seed)
    cfg = ModelConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_layers=args.layers, num_heads=args.heads,
                      intermediate_size=args.ffn, max_seq_len=seq, norm=args.norm, position=args.position,
                      activation=args.activation, special_token_ids=SPECIAL)
    model = MLMModel(cfg).to(device).train()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-4, betas=(0.9, 0.98), eps=1e-6, fused=True)
    step_model = torch.compile(model, dynamic=True) if args.compile else model
    batch = max(1, args.batch_tokens // seq)
    batches = make_batches(4, batch, seq, args, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")

    def step(i: int) -> torch.Tensor:
        b = batches[i % len(batches)]
        with autocast:
            loss = step_model(b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for i in range(args.warmup):
        step(i)
    sync(device)
    warmup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(args.steps):
        loss = step(i)
    sync(device)
    elapsed = time.perf_counter() - t0
    # real tokens only: with --pad-frac the padding is skipped, so it must not count as work
    real = [b["attention_mask"].sum().item() if b["attention_mask"] is not None else batch * seq for b in batches]
    tokens_per_s = sum(real[i % len(batches)] for i in range(args.steps)) / elapsed
    flops = model.flops_per_token(seq, masked_fraction=args.mask_prob)
    dense_flops = model.flops_per_token(seq, masked_fraction=1.0)
    row: dict[str, object] = {
        "seq": seq, "batch": batch, "real_token_frac": round(sum(real) / (len(real) * batch * seq), 3),
        "tokens_per_s": round(tokens_per_s, 1),
        "step_ms": round(1000 * elapsed / args.steps, 2),
        "flops_per_token": flops, "model_tflops": round(tokens_per_s * flops / 1e12, 2),
        "mfu": round(tokens_per_s * flops / args.peak_flops, 4),
        "dense_head_equiv_mfu": round(tokens_per_s * dense_flops / args.peak_flops, 4),
        "final_loss": round(float(loss), 4), "warmup_s": round(warmup_s, 1),
    }
    if device.type == "cuda":
        row["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    if not math.isfinite(float(loss)):
        row["error"] = "non-finite loss"
    return row


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if args.compile and args.capture_dynamic:
        torch._dynamo.config.capture_dynamic_output_shape_ops = True
    results = [run_seq(seq, args, device) for seq in args.seq]
    info: dict[str, object] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "precision": args.precision, "compile": args.compile,
        "capture_dynamic": args.capture_dynamic, "peak_flops": args.peak_flops,
        "model": {"layers": args.layers, "hidden": args.hidden, "heads": args.heads, "ffn": args.ffn,
                  "vocab": args.vocab, "norm": args.norm, "position": args.position,
                  "activation": args.activation},
        "mask_prob": args.mask_prob, "pad_frac": args.pad_frac, "steps": args.steps, "warmup": args.warmup,
    }
    if args.compile:
        from torch._dynamo.utils import counters
        info["graph_breaks"] = {str(k): int(v) for k, v in counters["graph_break"].items()}
    info["results"] = results
    text = json.dumps(info, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
