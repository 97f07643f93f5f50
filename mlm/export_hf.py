"""Export a checkpoint to a `transformers` folder, and import a transformers BERT back.

    python -m mlm.export_hf <checkpoint> <dir>              # ours -> transformers
    python -m mlm.export_hf --import <hf_dir> <output_dir>  # transformers -> ours (continue pretraining)

Each of our model options maps to a transformers architecture that computes the same function;
the export reloads the folder and compares logits before it reports success, and an option with
no exact equivalent is refused with a reason (`mlm.hf.mapping`, `mlm.hf.convert`).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

from mlm.errors import run_cli
from mlm.hf.convert import compare_logits, export_hf, import_hf, sample_batch
from mlm.hf.mapping import SPECIAL_LOGIT, TOLERANCE, from_hf_state, hf_architecture, to_hf_state

__all__ = ["export_hf", "import_hf", "compare_logits", "sample_batch", "hf_architecture", "to_hf_state",
           "from_hf_state", "SPECIAL_LOGIT", "TOLERANCE", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlm.export_hf", description=__doc__.splitlines()[0])
    parser.add_argument("source", help="checkpoint folder or run output_dir (with --import: a transformers folder)")
    parser.add_argument("target", help="folder to write")
    parser.add_argument("--import", dest="import_", action="store_true",
                        help="convert a transformers BERT-family folder into an mlm checkpoint instead")
    parser.add_argument("--no-check", action="store_true", help="skip the logit comparison")
    args = parser.parse_args(argv)
    if args.import_:
        path = import_hf(args.source, args.target, check=not args.no_check)
        print(f"imported {args.source} -> {path}")
        print(f"continue pretraining: python -m mlm.train --config {Path(args.target) / 'config.yaml'} "
              "data.train_files=[...]")
        return 0
    result = export_hf(args.source, args.target, check=not args.no_check)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    run_cli(main)
