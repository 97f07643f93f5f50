"""Scoring text with a checkpoint: held-out masked-LM metrics, pseudo-log-likelihood, fill-mask.

Masked metrics (loss, masked-token accuracy, perplexity = exp(loss)) are computed exactly as the
trainer's validation: the files go through `mlm.data.prepare_data` (same readers, same [CLS]-headed
blocks of the run's `data.seq_len`, with the checkpoint's tokenizer), and `mlm.loop.evaluate`
masks them with the run's collator settings and a fixed seed, so two checkpoints evaluated with
the same seed see the same masks and their numbers compare.

Pseudo-log-likelihood (Salazar et al. 2020, "Masked Language Model Scoring"): for each sentence,
mask each token in turn and sum log P(token | the rest); pseudo-perplexity is exp(-sum PLL /
tokens). The masked copies of all sentences are batched together and only the masked position
goes through the output layer. Special tokens ([CLS], [SEP], and [UNK], which the model gives
probability 0) are not scored. PLL needs no random masks, so it is deterministic.

Fill-mask never returns a special token: the model already gives special ids probability exactly
0 (logits -inf), and the ranking also skips the tokenizer's special ids, so even a checkpoint built
elsewhere (e.g. imported) can't answer "[SEP]".
"""
from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from mlm.checkpoint import RUN_CONFIG_FILE, TOKENIZER_FILE, load_pretrained, resolve_checkpoint
from mlm.config import Config, load_config
from mlm.data import prepare_data
from mlm.errors import UserError
from mlm.loop import eval_collator, evaluate
from mlm.model import IGNORE_INDEX
from mlm.padding import pad_batch
from mlm.runtime import setup_runtime
from mlm.schema import ConfigError
from mlm.tasks.records import RECORD_SUFFIXES, iter_records
from mlm.tokenizer import MASK, PAD, special_token_ids, text_encoder


# ---------------------------------------------------------------- masked-LM metrics

def run_config_of(checkpoint: Path) -> Config:
    """The checkpoint's training config (config.yaml), or defaults when it has none we can read."""
    path = checkpoint / RUN_CONFIG_FILE
    try:
        return load_config(path) if path.is_file() else Config()
    except ConfigError:
        return Config()


def masked_lm_metrics(checkpoint: str | Path, files: Sequence[str], *, seq_len: int = 0, batch_size: int = 64,
                      max_batches: int = 0, seed: int | None = None, text_field: str = "text",
                      txt_documents: str = "line", device: str = "auto", precision: str = "fp32",
                      cache_dir: str = "", mlm_probability: float | None = None) -> dict[str, Any]:
    """Masked loss, masked-token accuracy and perplexity of `checkpoint` on `files` (fixed masking seed).

    Masked as the run's own validation was (eval.mlm_probability, else the rates its training ended
    on), so the figure matches the trainer's. `seq_len` 0 and `seed` None take the run's data.seq_len
    and eval.seed; `mlm_probability` overrides the rate, to compare runs trained at different rates.
    """
    if not files:
        raise UserError("--data: give at least one held-out text file")
    found = resolve_checkpoint(checkpoint)
    model, tokenizer = load_pretrained(found)
    run = run_config_of(found)
    run.data.train_files = [str(f) for f in files]
    run.data.hf_dataset = ""
    run.data.tokenizer = str(found / TOKENIZER_FILE)
    run.data.validation_fraction = 0.0  # every document is held-out text: all of it lands in one split
    run.data.text_field = text_field
    run.data.txt_documents = txt_documents  # type: ignore[assignment]
    run.data.seq_len = min(seq_len or run.data.seq_len, model.cfg.max_seq_len)
    run.data.validate()
    seed = run.eval.seed if seed is None else seed
    rt = setup_runtime(device, precision)
    with tempfile.TemporaryDirectory(prefix="mlm-eval-") as tmp:
        run.data.cache_dir = cache_dir or tmp
        run.output_dir = tmp
        prepared = prepare_data(run, progress=False)
        model.to(rt.device)
        collator = eval_collator(run.collate, tokenizer,
                                 run.eval.mlm_probability if mlm_probability is None else mlm_probability)
        metrics = evaluate(model, prepared.train, collator, rt, batch_size, max_batches, seed)
        blocks, stats = len(prepared.train), prepared.stats
    return {"checkpoint": str(found), "masked_loss": metrics["eval_loss"],
            "masked_accuracy": metrics["eval_accuracy"], "masked_accuracy_stderr": metrics["eval_accuracy_stderr"],
            "perplexity": metrics["eval_perplexity"], "masked_tokens": metrics["eval_masked_tokens"],
            "blocks": blocks, "documents": stats.get("documents"), "seq_len": run.data.seq_len, "seed": seed,
            "mlm_probability": collator.mlm_probability, "strategy": run.collate.strategy}


# ---------------------------------------------------------------- pseudo-log-likelihood

@dataclass
class SentenceScore:
    text: str
    pll: float  # sum of log P(token | rest), natural log
    tokens: int  # scored tokens
    pseudo_perplexity: float
    truncated: bool = False


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
    for ids in (e.ids for e in text_encoder(tokenizer).encode_batch(list(sentences))):
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
        ids, attention = pad_batch([encoded[s] for s, _ in chunk], pad_id)
        rows, positions = torch.arange(len(chunk)), torch.tensor([p for _, p in chunk])
        labels = torch.full_like(ids, IGNORE_INDEX)
        labels[rows, positions] = ids[rows, positions]
        ids[rows, positions] = mask_id
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
    out: list[str] = []
    for name in files:
        path = Path(name)
        if not path.is_file():
            raise UserError(f"{path}: file not found")
        if path.suffix.lower() in RECORD_SUFFIXES:
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


# ---------------------------------------------------------------- fill-mask

@dataclass
class Prediction:
    token: str  # the vocabulary entry, e.g. "▁item" or "##s"
    token_id: int
    probability: float
    text: str = ""  # the token decoded on its own, e.g. "item"


def special_ids(model: Any, tokenizer: Any) -> list[int]:
    """Ids that are never a prediction: the model's excluded ids and the tokenizer's special ids."""
    return sorted(set(model.cfg.special_token_ids) | set(special_token_ids(tokenizer)))


@torch.no_grad()
def fill_mask(model: Any, tokenizer: Any, text: str, top_k: int = 5) -> list[list[Prediction]]:
    """For each [MASK] in `text` (left to right), the `top_k` most probable non-special tokens."""
    if top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {top_k}")
    mask_id = tokenizer.token_to_id(MASK)
    if mask_id is None:
        raise UserError(f"the tokenizer has no {MASK} token")
    ids = tokenizer.encode(text).ids  # a [MASK] typed in the text is the mask token here
    if len(ids) > model.cfg.max_seq_len:
        raise UserError(f"the text is {len(ids)} tokens long; this model reads at most {model.cfg.max_seq_len}")
    positions = [i for i, t in enumerate(ids) if t == mask_id]
    if not positions:
        raise UserError(f"no {MASK} in the text {text!r}; write {MASK} where a token should be predicted")
    model.eval()
    device = next(model.parameters()).device
    logits = model(torch.tensor([ids], device=device)).logits[0, positions].float()  # (masks, V)
    probs = torch.softmax(logits, dim=-1)
    banned = special_ids(model, tokenizer)
    probs[:, banned] = -1.0  # below every real probability, so top-k can't pick them
    k = min(top_k, probs.shape[-1] - len(banned))
    top = probs.topk(k, dim=-1)
    return [[Prediction(tokenizer.id_to_token(int(i)), int(i), float(p), tokenizer.decode([int(i)]))
             for p, i in zip(vals, idx)] for vals, idx in zip(top.values, top.indices)]
