"""A/B the training step of this tree against another checkout of mlm, in one process, alternating.

    git worktree add /tmp/mlm_before <commit>
    python scripts/bench_ab.py --baseline-tree /tmp/mlm_before [--steps 60] [--precision fp32]

The baseline's `mlm` package is copied under the name `mlm_baseline` (imports rewritten), so both
versions live in one process. Both models get the same weights; both step on the same masked
batches (from this tree's collator) with AdamW; timed steps alternate A, B, A, B ... so machine
noise hits both alike. Prints JSON: median step times, their ratio (this / baseline) and the
paired ratio, and the largest loss difference (0 when the arithmetic is unchanged).
"""
from __future__ import annotations

import argparse
import importlib
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from mlm.collate import MLMCollator  # noqa: E402
from mlm.model import MLMModel, ModelConfig  # noqa: E402


def import_baseline(tree: Path, workdir: Path):
    """The baseline tree's `mlm` package, importable as `mlm_baseline`."""
    target = workdir / "mlm_baseline"
    shutil.copytree(tree / "mlm", target)
    for path in target.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        text = re.sub(r"\b(from|import) mlm(\.|\b)", r"\1 mlm_baseline\2", text)
        path.write_text(text, encoding="utf-8")
    sys.path.insert(0, str(workdir))
    return importlib.import_module("mlm_baseline.model")


def model_config(vocab: int) -> ModelConfig:
    return ModelConfig(vocab_size=vocab, hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024,
                       max_seq_len=128, special_token_ids=[0, 1, 2, 3, 4])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-tree", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=60, help="timed steps per side")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--vocab", type=int, default=8192)
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="mlm-ab-"))
    try:
        baseline = import_baseline(args.baseline_tree.resolve(), workdir)
        cfg = model_config(args.vocab)
        torch.manual_seed(0)
        ours = MLMModel(cfg)
        theirs_cfg = baseline.ModelConfig(**{k: getattr(cfg, k) for k in cfg.__dataclass_fields__})
        theirs = baseline.MLMModel(theirs_cfg)
        theirs.load_state_dict(ours.state_dict())
        collator = MLMCollator(vocab_size=args.vocab, mask_token_id=4, pad_token_id=0,
                               special_token_ids=[0, 1, 2, 3, 4], seed=0)
        rng = np.random.default_rng(0)
        batches = [collator(rng.integers(5, args.vocab, (args.batch, 128))) for _ in range(8)]
        result = race({"this": ours, "baseline": theirs}, batches, args)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result, indent=1))
    return 0


def race(models: dict, batches: list, args) -> dict:
    optimizers = {k: torch.optim.AdamW(m.parameters(), lr=1e-4) for k, m in models.items()}
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if args.precision == "bf16" else None
    times: dict[str, list[float]] = {k: [] for k in models}
    losses: dict[str, list[float]] = {k: [] for k in models}
    for step in range(args.warmup + args.steps):
        batch = batches[step % len(batches)]
        order = list(models) if step % 2 == 0 else list(models)[::-1]
        for name in order:
            model, opt = models[name], optimizers[name]
            start = time.perf_counter()
            with autocast if autocast is not None else torch.autocast("cpu", enabled=False):
                loss = model(batch["input_ids"], labels=batch["labels"]).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            elapsed = time.perf_counter() - start
            if step >= args.warmup:
                times[name].append(elapsed)
                losses[name].append(float(loss.detach()))
    paired = [a / b for a, b in zip(times["this"], times["baseline"])]
    return {"precision": args.precision, "steps": args.steps, "threads": torch.get_num_threads(),
            "median_ms": {k: round(1000 * statistics.median(v), 1) for k, v in times.items()},
            "ratio_this_over_baseline": round(statistics.median(times["this"]) / statistics.median(times["baseline"]), 4),
            "paired_median_ratio": round(statistics.median(paired), 4),
            "max_loss_difference": max(abs(a - b) for a, b in zip(losses["this"], losses["baseline"]))}


if __name__ == "__main__":
    raise SystemExit(main())
