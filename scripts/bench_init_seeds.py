#!/usr/bin/env python
"""Masked loss after N steps, ours vs transformers' BertForMaskedLM, over several init seeds.

Why: `bench_train.py` compares the two from one seed, but the two models draw their initial
weights in different orders, so "the same seed" gives each a different random draw, and at
200 steps the draw alone moves the held-out loss by several hundredths of a nat. This script
keeps the data and the masks fixed (the `bench_train.py` set-up: same blocks, same batches,
same collator seed) and varies only the seed of the initial weights. For each seed it trains
both models side by side (ours at its default precision, bf16 autocast on this CPU; HF in
fp32) and reports the held-out masked loss of each and their paired difference over the same
held-out masked tokens; then the mean difference over seeds and its spread.

    python scripts/bench_init_seeds.py --seeds 0 1 2          # ~5 minutes per seed on 2 cores
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_train  # noqa: E402  (same folder: data, models, optimizer, schedule)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="init seeds")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--ours-precision", default="bf16", choices=["bf16", "fp32"])
    p.add_argument("--json", type=Path)
    own = p.parse_args(argv)
    args = bench_train.parse_args(["--steps", str(own.steps)])  # data seed and model size: bench_train's
    torch.set_num_threads(args.threads)
    per_seed = []
    with tempfile.TemporaryDirectory(prefix="bench_init_") as tmp:
        bench_train.build_data(args, Path(tmp))
        tok, train_blocks, eval_blocks = bench_train.load_data(Path(tmp))
        for seed in own.seeds:
            # only the weights' seed changes; data order and masks keep args.seed
            runners = [bench_train.Runner("ours", "ours", own.ours_precision, args, tok, init_seed=seed),
                       bench_train.Runner("hf", "hf", "fp32", args, tok, init_seed=seed)]
            for step, idx in enumerate(bench_train.batch_indices(len(train_blocks), args)):
                for r in runners:
                    r.step(train_blocks[idx], step)
            ours, hf = (r.eval_token_losses(eval_blocks, tok) for r in runners)
            diff = ours - hf
            row = {"seed": seed, "ours_eval_loss": round(float(ours.mean()), 4),
                   "hf_eval_loss": round(float(hf.mean()), 4), "diff": round(float(diff.mean()), 4),
                   "diff_stderr_masks": round(float(diff.std(ddof=1) / math.sqrt(len(diff))), 4)}
            per_seed.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    diffs = np.array([r["diff"] for r in per_seed])
    result = {
        "steps": own.steps, "ours_precision": own.ours_precision, "per_seed": per_seed,
        "mean_diff": round(float(diffs.mean()), 4),
        "diff_std_over_seeds": round(float(diffs.std(ddof=1)), 4) if len(diffs) > 1 else None,
        "ours_mean_eval_loss": round(float(np.mean([r["ours_eval_loss"] for r in per_seed])), 4),
        "hf_mean_eval_loss": round(float(np.mean([r["hf_eval_loss"] for r in per_seed])), 4),
    }
    bench_train.emit(result, own.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
