"""Held-out evaluation of a checkpoint: masked-LM metrics and pseudo-log-likelihood.

    python -m mlm.evaluate <checkpoint> --data held_out.txt [more files] [--pll]

Masked metrics (loss, masked-token accuracy, perplexity = exp(loss)) are computed exactly as
the trainer's validation: the files go through `mlm.data.prepare_data` (same readers, same
[CLS]-headed blocks of the run's `data.seq_len`, with the checkpoint's tokenizer), and
`mlm.train.evaluate` masks them with the run's collator settings and a fixed seed, so two
checkpoints evaluated with the same seed see the same masks and their numbers compare.

`--pll` adds pseudo-log-likelihood (Salazar et al. 2020, "Masked Language Model Scoring"):
for each sentence (a line of a text file, or a record's text field), mask each token in
turn and sum log P(token | the rest); pseudo-perplexity is exp(-sum PLL / tokens). The
masked copies of all sentences are batched together and only the masked position goes
through the output layer. Special tokens ([CLS], [SEP], and [UNK], which the model gives
probability 0) are not scored. PLL needs no random masks, so it is deterministic, and it
scores every token, which is what sentence-level comparisons (acceptability, reranking) need.
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from mlm.errors import UserError, run_cli
from mlm.tokenizer import MASK, PAD, special_token_ids


# ---------------------------------------------------------------- masked-LM metrics

def _run_config(ckpt: Path) -> Any:
    """The checkpoint's training config (config.yaml), or defaults when it has none we can read."""
    from mlm.checkpoint import RUN_CONFIG_FILE
    from mlm.config import Config, ConfigError, load_config

    path = ckpt / RUN_CONFIG_FILE
    try:
        return load_config(path) if path.is_file() else Config()
    except ConfigError:
        return Config()


def masked_lm_metrics(checkpoint: str | Path, files: Sequence[str], *, seq_len: int = 0, batch_size: int = 64,
                      max_batches: int = 0, seed: int | None = None, text_field: str = "text",
                      txt_documents: str = "line", device: str = "auto", precision: str = "fp32",
                      cache_dir: str = "") -> dict[str, Any]:
    """Masked loss, masked-token accuracy and perplexity of `checkpoint` on `files` (fixed masking seed).

    `seq_len` 0 and `seed` None take the run's data.seq_len and eval.seed.
    """
    from mlm.checkpoint import TOKENIZER_FILE, load_pretrained, resolve_checkpoint
    from mlm.config import TrainConfig
    from mlm.data import prepare_data
    from mlm.train import build_collator, evaluate, setup_runtime

    if not files:
        raise UserError("--data: give at least one held-out text file")
    ckpt = resolve_checkpoint(checkpoint)
    model, tokenizer = load_pretrained(ckpt)
    run = _run_config(ckpt)
    run.data.train_files = [str(f) for f in files]
    run.data.hf_dataset = ""
    run.data.tokenizer = str(ckpt / TOKENIZER_FILE)
    run.data.validation_fraction = 0.0  # every document is held-out text: all of it lands in one split
    run.data.text_field = text_field
    run.data.txt_documents = txt_documents
    run.data.seq_len = min(seq_len or run.data.seq_len, model.cfg.max_seq_len)
    run.data.validate()
    seed = run.eval.seed if seed is None else seed
    rt = setup_runtime(TrainConfig(device=device, precision=precision))
    with tempfile.TemporaryDirectory(prefix="mlm-eval-") as tmp:
        run.data.cache_dir = cache_dir or tmp
        run.output_dir = tmp
        prepared = prepare_data(run, progress=False)
        model.to(rt.device)
        metrics = evaluate(model, prepared.train, build_collator(run, tokenizer), rt, batch_size, max_batches, seed)
        blocks, stats = len(prepared.train), prepared.stats
    return {"checkpoint": str(ckpt), "masked_loss": metrics["eval_loss"], "masked_accuracy": metrics["eval_accuracy"],
            "perplexity": metrics["eval_perplexity"], "masked_tokens": metrics["eval_masked_tokens"],
            "blocks": blocks, "documents": stats.get("documents"), "seq_len": run.data.seq_len, "seed": seed,
            "mlm_probability": run.collate.mlm_probability, "strategy": run.collate.strategy}


# ---------------------------------------------------------------- pseudo-log-likelihood

@dataclass
class SentenceScore:
    text: str
    pll: float  # sum of log P(token | rest), natural log
    tokens: int  # scored tokens
    pseudo_perplexity: float
    truncated: bool = False


def _encoder(tokenizer: Any) -> Any:
    """A private copy that reads literal "[MASK]" etc. in text as text, as the data pipeline does."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tokenizer.to_str())
    tok.no_padding()
    tok.no_truncation()
    tok.encode_special_tokens = True
    return tok


@torch.no_grad()
def pseudo_log_likelihood(model: Any, tokenizer: Any, sentences: Sequence[str],
                          batch_size: int = 64) -> list[SentenceScore]:
    """PLL of each sentence: sum over its non-special tokens of log P(token | all other tokens),
    each token masked in turn; the masked copies are scored `batch_size` at a time."""
    mask_id, pad_id = tokenizer.token_to_id(MASK), tokenizer.token_to_id(PAD)
    if mask_id is None:
        raise UserError(f"the tokenizer has no {MASK} token")
    special = set(special_token_ids(tokenizer)) | set(model.cfg.special_token_ids)
    max_len = model.cfg.max_seq_len
    encoded, truncated = [], []
    for ids in (e.ids for e in _encoder(tokenizer).encode_batch(list(sentences))):
        truncated.append(len(ids) > max_len)
        encoded.append(ids if len(ids) <= max_len else ids[:max_len - 1] + ids[-1:])  # keep the final [SEP]
    # One job per (sentence, position): that copy has [MASK] at the position.
    jobs = [(s, p) for s, ids in enumerate(encoded) for p, t in enumerate(ids) if t not in special]
    jobs.sort(key=lambda j: len(encoded[j[0]]))  # similar lengths per batch: little padding
    model.eval()
    device = next(model.parameters()).device
    pll = [0.0] * len(encoded)
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start:start + batch_size]
        width = max(len(encoded[s]) for s, _ in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        attention = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        for row, (s, p) in enumerate(chunk):
            seq = encoded[s]
            ids[row, :len(seq)] = torch.as_tensor(seq)
            attention[row, :len(seq)] = 1
            labels[row, p] = seq[p]
            ids[row, p] = mask_id
        out = model(ids.to(device), attention_mask=attention.to(device), labels=labels.to(device))
        # Exactly one label per row, so the (m, V) logits are one row per job, in order.
        logp = torch.log_softmax(out.logits.double(), dim=-1).gather(1, out.target[:, None]).squeeze(1)
        for (s, _), value in zip(chunk, logp.tolist()):
            pll[s] += value
    counts = [sum(1 for t in ids if t not in special) for ids in encoded]
    return [SentenceScore(text, p, n, math.exp(-p / n) if n else float("nan"), tr)
            for text, p, n, tr in zip(sentences, pll, counts, truncated)]


def read_sentences(files: Sequence[str], text_field: str = "text", limit: int = 0) -> list[str]:
    """Non-empty lines of text files, or the `text_field` of .jsonl/.json/.csv/.tsv records."""
    from mlm.finetune import iter_records

    out: list[str] = []
    for name in files:
        path = Path(name)
        if not path.is_file():
            raise UserError(f"{path}: file not found")
        if path.suffix.lower() in (".jsonl", ".json", ".ndjson", ".csv", ".tsv"):
            for n, rec in iter_records(path):
                if not isinstance(rec, dict) or not isinstance(rec.get(text_field), str):
                    raise UserError(f"{path}:{n}: no string field {text_field!r}; set --text-field")
                if rec[text_field].strip():
                    out.append(rec[text_field].strip())
        else:
            try:
                out.extend(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
            except UnicodeDecodeError:
                raise UserError(f"{path}: not a UTF-8 text file") from None
        if limit and len(out) >= limit:
            return out[:limit]
    if not out:
        raise UserError(f"no sentences in {', '.join(files)}")
    return out


def corpus_pll(scores: Sequence[SentenceScore]) -> dict[str, Any]:
    tokens = sum(s.tokens for s in scores)
    total = sum(s.pll for s in scores)
    return {"pll_sentences": len(scores), "pll_tokens": tokens, "pll_sum": total,
            "pll_mean_per_sentence": total / max(1, len(scores)),
            "pseudo_perplexity": math.exp(-total / tokens) if tokens else float("nan"),
            "pll_truncated_sentences": sum(s.truncated for s in scores)}


# ---------------------------------------------------------------- CLI

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlm.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="checkpoint folder, or a run's output_dir (its newest checkpoint)")
    parser.add_argument("--data", nargs="+", required=True, help="held-out text files (.txt, .jsonl, ...)")
    parser.add_argument("--seq-len", type=int, default=0, help="block length (default: the run's data.seq_len)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-batches", type=int, default=0, help="0: all blocks")
    parser.add_argument("--seed", type=int, default=None, help="masking seed (default: the run's eval.seed)")
    parser.add_argument("--text-field", default="text", help="field of .jsonl/.json/.csv records")
    parser.add_argument("--txt-documents", choices=("line", "paragraph"), default="line")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16", "auto"), default="fp32")
    parser.add_argument("--pll", action="store_true", help="also score each sentence by pseudo-log-likelihood")
    parser.add_argument("--pll-only", action="store_true", help="only pseudo-log-likelihood (no masked metrics)")
    parser.add_argument("--max-sentences", type=int, default=1000, help="PLL: first N sentences (0: all)")
    parser.add_argument("--pll-output", default="", help="PLL: write one JSON line per sentence here")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    result: dict[str, Any] = {}
    if not args.pll_only:
        result.update(masked_lm_metrics(args.checkpoint, args.data, seq_len=args.seq_len, batch_size=args.batch_size,
                                        max_batches=args.max_batches, seed=args.seed, text_field=args.text_field,
                                        txt_documents=args.txt_documents, device=args.device,
                                        precision=args.precision))
    if args.pll or args.pll_only:
        from mlm.checkpoint import load_pretrained
        from mlm.config import TrainConfig
        from mlm.train import setup_runtime

        rt = setup_runtime(TrainConfig(device=args.device, precision="fp32"))
        model, tokenizer = load_pretrained(args.checkpoint, device=rt.device)
        scores = pseudo_log_likelihood(model, tokenizer, read_sentences(args.data, args.text_field,
                                                                        args.max_sentences), args.batch_size)
        result.update(corpus_pll(scores))
        if args.pll_output:
            with open(args.pll_output, "w", encoding="utf-8") as fh:
                for s in scores:
                    fh.write(json.dumps(asdict(s)) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    run_cli(main)
