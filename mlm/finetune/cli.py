"""`python -m mlm.finetune --config configs/finetune.yaml [key.sub=value ...]`: parse, load the
config, fine-tune, print the headline results as one JSON line."""
from __future__ import annotations

import argparse
import json
from typing import Sequence

from mlm.finetune.config import FinetuneConfig
from mlm.finetune.run import finetune
from mlm.schema import load_config

HEADLINE = ("task", "validation_accuracy", "test_accuracy", "test_macro_f1", "validation_entity_f1",
            "test_entity_f1", "test_token_accuracy", "validation_pearson", "test_pearson", "test_spearman",
            "test_mse", "best_epoch", "steps", "stopped_early", "checkpoint")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlm.finetune",
                                     description="Fine-tune a checkpoint on a labelled task (sequence "
                                                 "classification, token classification, regression).")
    parser.add_argument("--config", "-c", help="YAML config (e.g. configs/finetune.yaml)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. init_from=runs/base")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides, cls=FinetuneConfig)
    results = finetune(cfg)
    print(json.dumps({k: results[k] for k in HEADLINE if k in results}))
    return 0
