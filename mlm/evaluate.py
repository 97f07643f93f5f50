"""Held-out evaluation of a checkpoint: `python -m mlm.evaluate <checkpoint> --data held_out.txt [--pll]`.

Masked-LM metrics computed exactly like the trainer's validation, and pseudo-log-likelihood;
the work is in `mlm.scoring`.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any, Sequence

from mlm.checkpoint import load_pretrained
from mlm.errors import UserError, run_cli
from mlm.runtime import setup_runtime
from mlm.scoring import SentenceScore, corpus_pll, masked_lm_metrics, pseudo_log_likelihood, read_sentences
from mlm.storage import write_text_atomic

__all__ = ["SentenceScore", "corpus_pll", "masked_lm_metrics", "pseudo_log_likelihood", "read_sentences", "main"]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mlm.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="checkpoint folder, or a run's output_dir (its newest checkpoint)")
    parser.add_argument("--data", nargs="+", required=True, help="held-out text files (.txt, .jsonl, ...)")
    parser.add_argument("--seq-len", type=int, default=0, help="block length (default: the run's data.seq_len)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-batches", type=int, default=0, help="0: all blocks")
    parser.add_argument("--seed", type=int, default=None, help="masking seed (default: the run's eval.seed)")
    parser.add_argument("--mlm-probability", type=float, default=None,
                        help="share of tokens masked (default: the run's validation rate, eval.mlm_probability)")
    parser.add_argument("--text-field", default="text", help="field of .jsonl/.json/.csv records")
    parser.add_argument("--txt-documents", choices=("line", "paragraph", "file"), default="line")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16", "auto"), default="fp32")
    parser.add_argument("--pll", action="store_true", help="also score each sentence by pseudo-log-likelihood")
    parser.add_argument("--pll-only", action="store_true", help="only pseudo-log-likelihood (no masked metrics)")
    parser.add_argument("--max-sentences", type=int, default=1000, help="PLL: first N sentences (0: all)")
    parser.add_argument("--pll-output", default="", help="PLL: write one JSON line per sentence here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.mlm_probability is not None and not 0.0 < args.mlm_probability <= 1.0:
        raise UserError(f"--mlm-probability must be in (0, 1], got {args.mlm_probability}")
    result: dict[str, Any] = {}
    if not args.pll_only:
        result.update(masked_lm_metrics(args.checkpoint, args.data, seq_len=args.seq_len, batch_size=args.batch_size,
                                        max_batches=args.max_batches, seed=args.seed, text_field=args.text_field,
                                        txt_documents=args.txt_documents, device=args.device,
                                        precision=args.precision, mlm_probability=args.mlm_probability))
    if args.pll or args.pll_only:
        rt = setup_runtime(args.device, "fp32")
        model, tokenizer = load_pretrained(args.checkpoint, device=rt.device)
        sentences = read_sentences(args.data, args.text_field, args.max_sentences)
        scores = pseudo_log_likelihood(model, tokenizer, sentences, args.batch_size)
        result.update(corpus_pll(scores))
        if args.pll_output:
            write_text_atomic(args.pll_output, "".join(json.dumps(asdict(s)) + "\n" for s in scores),
                              what="the per-sentence scores")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    run_cli(main)
