#!/usr/bin/env python
"""Training throughput, peak memory and loss: mlm's MLMModel vs transformers' BertForMaskedLM.

Same configuration for both (vocab 8192, hidden 256, 4 layers, 4 heads, FFN 1024, seq 128,
batch 32, dropout 0), same initial seed, same data: a WordPiece tokenizer trained with
`mlm.tokenizer.train_tokenizer` on the texts of `pydoc_data.topics`, documents packed into
128-token blocks, masked by `mlm.collate.MLMCollator` (15%, 80/10/10; a local fallback
masker if that module is missing) with the same seed for every model, so every model sees
identical batches. Same optimizer (AdamW, fused CPU kernel, no decay on vectors, clipping
at 1.0, linear warmup then cosine).

Throughput: the models train in ONE process and take turns step by step, so background
load and thermal drift hit all of them alike. A timed step is collation + forward +
backward + clipping + AdamW + zero_grad; the first `--warmup` steps are not timed.
Ours runs at its default precision on this CPU (bf16 autocast: the CPU has AVX-512 BF16)
and in fp32; HF in fp32 (and bf16 with --hf-bf16).

Peak memory: each (model, precision) trains `--mem-steps` steps in its own fresh
subprocess, importing only what that model needs (torch, numpy, tokenizers and mlm for
both; transformers for HF), and reports the peak RSS (VmHWM) of the process: what a
training process with that model needs. It also reports the RSS before the model was
built (after imports and data), so the part due to the model itself (parameters, AdamW
state, activations, logits, allocator slack) is shown as `*_above_baseline`.

Loss: after the same number of steps from the same seed, the masked cross-entropy on
held-out blocks (10% of the blocks, never trained on; fp32; the same 4 maskings for
every model), with its standard error over the held-out masked tokens, plus the mean
training loss of the last 10 steps.

    python scripts/bench_train.py              # full run: 200 steps, ~10 minutes on 2 cores
    python scripts/bench_train.py --steps 20 --mem-steps 3   # quick check
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlm.config import ModelConfig  # noqa: E402
from mlm.model import MLMModel  # noqa: E402
from mlm.tokenizer import MASK, PAD, special_token_ids, train_tokenizer  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=200, help="training steps per model (loss is compared after these)")
    p.add_argument("--warmup", type=int, default=5, help="first steps not timed")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--ffn", type=int, default=1024)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-warmup", type=int, default=20, help="steps of linear learning-rate warmup")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mem-steps", type=int, default=30,
                   help="steps per memory subprocess (enough for the allocator to settle); 0 skips memory")
    p.add_argument("--hf-bf16", action="store_true", help="also time HF under bf16 autocast")
    p.add_argument("--no-fp32", action="store_true", help="skip ours in fp32 (quicker)")
    p.add_argument("--json", type=Path, help="also write the JSON result here")
    p.add_argument("--child-memory", help=argparse.SUPPRESS)  # "ours:bf16" etc., internal
    p.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ---------------------------------------------------------------- data

def build_data(args, out_dir: Path) -> None:
    """Train the tokenizer, pack the corpus into blocks, write both to `out_dir`."""
    from pydoc_data.topics import topics

    texts = [topics[k] for k in sorted(topics)]
    tok = train_tokenizer(texts, vocab_size=args.vocab, kind="wordpiece")
    ids: list[int] = []
    for enc in tok.encode_batch(texts):  # [CLS] document [SEP], documents back to back
        ids.extend(enc.ids)
    n_blocks = len(ids) // args.seq
    blocks = np.asarray(ids[: n_blocks * args.seq], dtype=np.int64).reshape(n_blocks, args.seq)
    perm = np.random.default_rng(args.seed).permutation(n_blocks)
    n_eval = max(args.batch, n_blocks // 10)
    np.save(out_dir / "train.npy", blocks[perm[n_eval:]])
    np.save(out_dir / "eval.npy", blocks[perm[:n_eval]])
    (out_dir / "tokenizer.json").write_text(tok.to_str(), encoding="utf-8")


def load_data(data_dir: Path):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str((data_dir / "tokenizer.json").read_text(encoding="utf-8"))
    return tok, np.load(data_dir / "train.npy"), np.load(data_dir / "eval.npy")


class LocalMasker:
    """Fallback when mlm.collate is missing: 15% of non-special tokens, 80/10/10."""

    def __init__(self, tok, seed: int):
        self.special = np.zeros(tok.get_vocab_size(), dtype=bool)
        self.special[special_token_ids(tok)] = True
        self.mask_id = tok.token_to_id(MASK)
        self.normal = np.flatnonzero(~self.special)
        self.rng = np.random.default_rng(seed)

    def __call__(self, blocks) -> dict[str, torch.Tensor]:
        ids = np.stack(blocks).astype(np.int64)
        chosen = (self.rng.random(ids.shape) < 0.15) & ~self.special[ids]
        labels = np.where(chosen, ids, -100)
        r = self.rng.random(ids.shape)
        ids[chosen & (r < 0.8)] = self.mask_id
        rand = chosen & (r >= 0.8) & (r < 0.9)
        ids[rand] = self.rng.choice(self.normal, size=int(rand.sum()))
        return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.ones(ids.shape, dtype=torch.long),
                "labels": torch.from_numpy(labels)}


def make_collator(tok, seed: int):
    try:
        from mlm.collate import MLMCollator
    except ImportError:
        return LocalMasker(tok, seed), "local fallback (15%, 80/10/10)"
    collator = MLMCollator.from_tokenizer(tok, mlm_probability=0.15, mask_replace_prob=0.8,
                                          random_replace_prob=0.1, seed=seed)
    return collator, repr(collator)


# ---------------------------------------------------------------- models

def build_model(kind: str, args, tok, init_seed: int) -> torch.nn.Module:
    torch.manual_seed(init_seed)
    if kind == "ours":
        cfg = ModelConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_layers=args.layers,
                          num_heads=args.heads, intermediate_size=args.ffn, max_seq_len=args.seq,
                          dropout=0.0, attention_dropout=0.0, pad_token_id=tok.token_to_id(PAD),
                          special_token_ids=special_token_ids(tok))
        return MLMModel(cfg)
    from transformers import BertConfig, BertForMaskedLM

    cfg = BertConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
                     num_attention_heads=args.heads, intermediate_size=args.ffn, max_position_embeddings=args.seq,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=tok.token_to_id(PAD))
    cfg._attn_implementation = "sdpa"
    return BertForMaskedLM(cfg)


class Runner:
    """One model + optimizer + collator at one precision; `step()` is the timed unit."""

    def __init__(self, name: str, kind: str, precision: str, args, tok, init_seed: int | None = None):
        self.name, self.kind, self.precision, self.args = name, kind, precision, args
        self.model = build_model(kind, args, tok, args.seed if init_seed is None else init_seed).train()
        decay = [p for p in self.model.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.model.parameters() if p.dim() < 2]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                                      {"params": no_decay, "weight_decay": 0.0}],
                                     lr=args.lr, betas=(0.9, 0.98), eps=1e-6, fused=True)
        self.collator, self.collator_desc = make_collator(tok, args.seed)
        self.times: list[float] = []
        self.losses: list[float] = []

    def autocast(self):
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.kind == "ours":
            return self.model(batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
        return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          labels=batch["labels"]).loss

    def step(self, blocks: np.ndarray, step: int) -> None:
        for group in self.opt.param_groups:
            group["lr"] = lr_at(step, self.args)
        t0 = time.perf_counter()
        batch = self.collator(list(blocks))
        with self.autocast():
            loss = self.loss(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.times.append(time.perf_counter() - t0)
        self.losses.append(loss.detach().item())

    @torch.no_grad()
    def eval_token_losses(self, eval_blocks: np.ndarray, tok, seeds=(101, 102, 103, 104)) -> np.ndarray:
        """Per-token fp32 cross-entropy over the held-out blocks, under fixed maskings."""
        self.model.eval()
        out = []
        for seed in seeds:
            collator, _ = make_collator(tok, seed)
            for i in range(0, len(eval_blocks), self.args.batch):
                batch = collator(list(eval_blocks[i:i + self.args.batch]))
                labels = batch["labels"]
                if self.kind == "ours":
                    res = self.model(batch["input_ids"], batch["attention_mask"], labels=labels)
                    logits, target = res.logits, res.target
                else:
                    dense = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                    where = labels != -100
                    logits, target = dense[where].float(), labels[where]
                out.append(F.cross_entropy(logits, target, reduction="none").numpy())
        self.model.train()
        return np.concatenate(out)


def lr_at(step: int, args) -> float:
    if step < args.lr_warmup:
        return args.lr * (step + 1) / args.lr_warmup
    progress = (step - args.lr_warmup) / max(1, args.steps - args.lr_warmup)
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def batch_indices(n_blocks: int, args) -> list[np.ndarray]:
    """The blocks of every step: epoch-wise permutations from the seed, the same for all models."""
    rng = np.random.default_rng(args.seed + 1)
    order = np.concatenate([rng.permutation(n_blocks) for _ in range(args.steps * args.batch // n_blocks + 1)])
    return [order[s * args.batch:(s + 1) * args.batch] for s in range(args.steps)]


# ---------------------------------------------------------------- memory (subprocess)

def rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child_memory(args) -> None:
    kind, precision = args.child_memory.split(":")
    if kind == "hf":
        from transformers import BertForMaskedLM  # noqa: F401  (its library is part of its baseline)
    torch.set_num_threads(args.threads)
    tok, train_blocks, _ = load_data(args.data_dir)
    baseline = rss_mb("VmRSS")  # after the imports each model needs and the data, before the model
    runner = Runner(args.child_memory, kind, precision, args, tok)
    for s, idx in enumerate(batch_indices(len(train_blocks), args)[: args.mem_steps]):
        runner.step(train_blocks[idx], s)
    print(json.dumps({"peak_rss_mb": rss_mb("VmHWM"), "baseline_rss_mb": baseline}))


def measure_memory(name: str, args, data_dir: Path) -> dict[str, float]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child-memory", name, "--data-dir", str(data_dir),
           "--steps", str(max(args.steps, args.mem_steps)), "--mem-steps", str(args.mem_steps),
           "--threads", str(args.threads), "--seed", str(args.seed), "--batch", str(args.batch),
           "--seq", str(args.seq), "--vocab", str(args.vocab), "--hidden", str(args.hidden),
           "--layers", str(args.layers), "--heads", str(args.heads), "--ffn", str(args.ffn)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"memory child {name} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- main

def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child_memory:
        child_memory(args)
        return 0
    if args.steps <= args.warmup:
        raise SystemExit("--steps must exceed --warmup")
    torch.set_num_threads(args.threads)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        data_dir = Path(tmp)
        build_data(args, data_dir)
        tok, train_blocks, eval_blocks = load_data(data_dir)

        memory = {}
        if args.mem_steps > 0:  # first, while nothing else is running in this process
            names = ["ours:bf16", "hf:fp32"] + ([] if args.no_fp32 else ["ours:fp32"])
            names += ["hf:bf16"] if args.hf_bf16 else []
            for name in names:
                memory[name] = measure_memory(name, args, data_dir)
                print(f"memory {name}: {memory[name]}", file=sys.stderr, flush=True)

        runners = [Runner("ours:bf16", "ours", "bf16", args, tok), Runner("hf:fp32", "hf", "fp32", args, tok)]
        if not args.no_fp32:
            runners.append(Runner("ours:fp32", "ours", "fp32", args, tok))
        if args.hf_bf16:
            runners.append(Runner("hf:bf16", "hf", "bf16", args, tok))
        for step, idx in enumerate(batch_indices(len(train_blocks), args)):
            for runner in runners:  # take turns, step by step
                runner.step(train_blocks[idx], step)
            if (step + 1) % 20 == 0 or step + 1 == args.steps:
                print(f"step {step + 1}/{args.steps}: " + ", ".join(
                    f"{r.name} {1000 * r.times[-1]:.0f} ms loss {r.losses[-1]:.3f}" for r in runners),
                    file=sys.stderr, flush=True)

        tokens_per_step = args.batch * args.seq
        result: dict[str, object] = {}
        per = {}
        for r in runners:
            timed = r.times[args.warmup:]
            ev = r.eval_token_losses(eval_blocks, tok)
            per[r.name] = {
                "tokens_per_s": round(tokens_per_step * len(timed) / sum(timed), 1),
                "median_step_ms": round(1000 * float(np.median(timed)), 1),
                "eval_loss": round(float(ev.mean()), 4),
                "eval_loss_stderr": round(float(ev.std(ddof=1) / math.sqrt(len(ev))), 4),
                "eval_masked_tokens": int(len(ev)),
                "train_loss_last10": round(float(np.mean(r.losses[-10:])), 4),
                **({"peak_rss_mb": round(memory[r.name]["peak_rss_mb"], 1),
                    "baseline_rss_mb": round(memory[r.name]["baseline_rss_mb"], 1)} if r.name in memory else {}),
            }
        ours, hf = per["ours:bf16"], per["hf:fp32"]
        result["ours_tokens_per_s"] = ours["tokens_per_s"]
        result["hf_tokens_per_s"] = hf["tokens_per_s"]
        result["ratio"] = round(ours["tokens_per_s"] / hf["tokens_per_s"], 3)
        if "ours:fp32" in per:
            result["ours_fp32_tokens_per_s"] = per["ours:fp32"]["tokens_per_s"]
            result["ratio_fp32"] = round(per["ours:fp32"]["tokens_per_s"] / hf["tokens_per_s"], 3)
        if "hf:bf16" in per:
            result["hf_bf16_tokens_per_s"] = per["hf:bf16"]["tokens_per_s"]
            result["ratio_bf16"] = round(ours["tokens_per_s"] / per["hf:bf16"]["tokens_per_s"], 3)
        if memory:
            def above(run):
                return run["peak_rss_mb"] - run["baseline_rss_mb"]

            result["ours_peak_rss_mb"] = ours["peak_rss_mb"]
            result["hf_peak_rss_mb"] = hf["peak_rss_mb"]
            result["memory_ratio"] = round(ours["peak_rss_mb"] / hf["peak_rss_mb"], 3)
            result["memory_ratio_above_baseline"] = round(above(ours) / above(hf), 3)
            if "ours:fp32" in per:
                result["ours_fp32_peak_rss_mb"] = per["ours:fp32"]["peak_rss_mb"]
                result["memory_ratio_fp32"] = round(per["ours:fp32"]["peak_rss_mb"] / hf["peak_rss_mb"], 3)
                result["memory_ratio_fp32_above_baseline"] = round(above(per["ours:fp32"]) / above(hf), 3)
        result[f"ours_eval_loss_after_{args.steps}"] = ours["eval_loss"]
        result[f"hf_eval_loss_after_{args.steps}"] = hf["eval_loss"]
        if "ours:fp32" in per:
            result[f"ours_fp32_eval_loss_after_{args.steps}"] = per["ours:fp32"]["eval_loss"]
        result["per_run"] = per
        result["setup"] = {
            "vocab": args.vocab, "hidden": args.hidden, "layers": args.layers, "heads": args.heads,
            "ffn": args.ffn, "seq": args.seq, "batch": args.batch, "steps": args.steps, "timed_steps":
            args.steps - args.warmup, "lr": args.lr, "threads": args.threads, "seed": args.seed,
            "train_blocks": int(len(train_blocks)), "eval_blocks": int(len(eval_blocks)),
            "tokenizer_vocab": tok.get_vocab_size(), "collator": runners[0].collator_desc,
            "memory_steps": args.mem_steps, "torch": torch.__version__,
            "transformers": __import__("transformers").__version__, "python": platform.python_version(),
            "wall_s": round(time.time() - started, 1),
        }
    emit(result, args.json)
    return 0


def emit(result: dict, path: Path | None) -> None:
    """The result as indented JSON on stdout, and in `path` when given."""
    text = json.dumps(result, indent=2)
    print(text)
    if path:
        path.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
