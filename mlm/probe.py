"""Linear probe: `python -m mlm.probe <checkpoint> --train train.jsonl --test test.jsonl [--validation dev.jsonl]`.

Frozen encoder features -> logistic regression (`mlm.tasks.linear_probe`): what the encoder
already encodes, in seconds. `--random-init` probes the same architecture with random weights,
the baseline a pretrained encoder has to beat.
"""
from __future__ import annotations

import argparse
import json
from typing import Sequence

import torch

from mlm.checkpoint import load_pretrained
from mlm.errors import run_cli
from mlm.tasks.linear_probe import L2_GRID, LogisticRegression, extract_features, fit_logistic_regression, linear_probe

__all__ = ["L2_GRID", "LogisticRegression", "extract_features", "fit_logistic_regression", "linear_probe", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlm.probe", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="checkpoint folder or a run's output_dir")
    parser.add_argument("--train", required=True, help="labeled .jsonl/.csv/.tsv to fit the probe on")
    parser.add_argument("--test", required=True, help="labeled file to report accuracy on")
    parser.add_argument("--validation", default="", help="labeled file to choose the L2 penalty on")
    parser.add_argument("--text-field", default="text")
    parser.add_argument("--text-pair-field", default="", help="a second text per example ([CLS] a [SEP] b [SEP])")
    parser.add_argument("--label-field", default="label")
    parser.add_argument("--pooling", choices=("mean", "cls"), default="mean")
    parser.add_argument("--l2", type=float, default=None, help="L2 penalty (default: chosen on --validation, else 0.01)")
    parser.add_argument("--random-init", action="store_true",
                        help="probe the same architecture with random weights (baseline)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights for --random-init")
    args = parser.parse_args(argv)
    model, tokenizer = load_pretrained(args.checkpoint)
    if args.random_init:
        torch.manual_seed(args.seed)
        model.reset_parameters()
    result = linear_probe(model, tokenizer, args.train, args.test, args.validation, args.text_field,
                          args.label_field, args.pooling, args.l2, pair_field=args.text_pair_field)
    result["checkpoint"] = args.checkpoint
    result["random_init"] = args.random_init
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    run_cli(main)
