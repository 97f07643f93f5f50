"""Fill [MASK] tokens: `python -m mlm.fill_mask <checkpoint> "the cat sat on the [MASK] ."`.

The quickest check that a checkpoint learned something, and the first thing a user tries: the
top-k tokens for every [MASK] with their probabilities, never a special token (`mlm.scoring.fill_mask`).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Sequence

from mlm.checkpoint import load_pretrained
from mlm.errors import run_cli
from mlm.scoring import Prediction, fill_mask
from mlm.tokenizer import MASK

__all__ = ["Prediction", "fill_mask", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlm.fill_mask", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="checkpoint folder, or a run's output_dir (its newest checkpoint)")
    parser.add_argument("texts", nargs="+", help=f"text(s) containing {MASK}")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print one JSON object per text")
    args = parser.parse_args(argv)
    model, tokenizer = load_pretrained(args.checkpoint)
    for text in args.texts:
        results = fill_mask(model, tokenizer, text, args.top_k)
        if args.json:
            print(json.dumps({"text": text, "masks": [[asdict(p) for p in preds] for preds in results]}))
            continue
        print(text)
        for n, preds in enumerate(results, 1):
            label = f"  {MASK} #{n}:" if len(results) > 1 else f"  {MASK}:"
            print(label + "  " + "  ".join(f"{p.text or p.token} {p.probability:.3f}" for p in preds))
    return 0


if __name__ == "__main__":
    run_cli(main)
