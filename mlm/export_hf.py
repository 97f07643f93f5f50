"""Export a checkpoint to a `transformers` folder, and import a transformers BERT back.

    python -m mlm.export_hf <checkpoint> <dir>              # ours -> transformers
    python -m mlm.export_hf --import <hf_dir> <output_dir>  # transformers -> ours (continue pretraining)

A pretrained checkpoint exports as a masked LM (`AutoModelForMaskedLM`); a fine-tuned one (it has
the head files `classifier.json` / `classifier.safetensors`) as a sequence or token classifier
(`AutoModelForSequenceClassification` / `AutoModelForTokenClassification`, labels set), ready for
`transformers.pipeline`. Each of our model options maps to a transformers architecture that
computes the same function; the export reloads the folder and compares logits before it reports
success, and an option with no exact equivalent is refused with a reason (`mlm.hf`).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence

from mlm.errors import run_cli
from mlm.finetune import is_finetuned, load_classifier
from mlm.hf.convert import compare_logits, export_hf as export_masked_lm, import_hf, sample_batch
from mlm.hf.heads import export_classifier
from mlm.hf.mapping import SPECIAL_LOGIT, TOLERANCE, from_hf_state, hf_architecture, to_hf_state

__all__ = ["export_hf", "export_masked_lm", "export_classifier", "import_hf", "compare_logits", "sample_batch",
           "hf_architecture", "to_hf_state", "from_hf_state", "SPECIAL_LOGIT", "TOLERANCE", "main"]


def export_hf(checkpoint: str | Path, out_dir: str | Path, check: bool = True, masked_lm: bool = False) -> dict[str, Any]:
    """Export `checkpoint`: as a classifier when it is fine-tuned (unless `masked_lm`), else as a masked LM."""
    if not masked_lm and is_finetuned(checkpoint):
        model, tokenizer, info = load_classifier(checkpoint)
        return {**export_classifier(model, tokenizer, info, out_dir, check=check), "checkpoint": str(checkpoint)}
    return export_masked_lm(checkpoint, out_dir, check=check)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlm.export_hf", description=__doc__.splitlines()[0])
    parser.add_argument("source", help="checkpoint folder or run output_dir (with --import: a transformers folder)")
    parser.add_argument("target", help="folder to write")
    parser.add_argument("--import", dest="import_", action="store_true",
                        help="convert a transformers BERT-family folder into an mlm checkpoint instead")
    parser.add_argument("--masked-lm", action="store_true",
                        help="export a fine-tuned checkpoint's encoder as a masked LM (its head left out)")
    parser.add_argument("--no-check", action="store_true", help="skip the logit comparison")
    args = parser.parse_args(argv)
    if args.import_:
        path = import_hf(args.source, args.target, check=not args.no_check)
        print(f"imported {args.source} -> {path}")
        print(f"continue pretraining: python -m mlm.train --config {Path(args.target) / 'config.yaml'} "
              "data.train_files=[...]")
        return 0
    result = export_hf(args.source, args.target, check=not args.no_check, masked_lm=args.masked_lm)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    run_cli(main)
