"""The baseline a user would pick without a neural network: per-token logistic regression over
hand-made window features, scored with the same entity F1 as `mlm.finetune`.

    python scripts/token_baseline.py --train T/train.jsonl --validation T/dev.jsonl --test T/test.jsonl

Features of word i (binary, from the training set's vocabulary of features): the word, its
lowercase form, its shape (Xxxx, xx_x, dd...), prefixes and suffixes of 1-3 characters, whether it
starts the sentence, and the lowercase form and shape of the words at i-2, i-1, i+1, i+2. The
classifier is multinomial logistic regression with an L2 penalty fitted with full-batch L-BFGS
(`mlm.tasks.linear_probe.fit_sparse_logistic_regression`, float64, deterministic), the penalty
picked on the validation file by entity F1. Tags are predicted per word independently and read
back into entities exactly like the fine-tuned model's (`mlm.tasks.metrics.entity_metrics`, seqeval's
default mode). Files are read by `mlm.tasks.tagged` (JSON Lines with tokens/tags, or CoNLL).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Sequence

from mlm.errors import run_cli
from mlm.tasks.linear_probe import SparseLogisticRegression, fit_sparse_logistic_regression
from mlm.tasks.metrics import entity_metrics
from mlm.tasks.tagged import TaggedData, encode_tags, read_tagged, tag_names

L2_GRID = (1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3)
OFFSETS = (-2, -1, 1, 2)


def shape(word: str) -> str:
    """Xxxx -> Xx, snake_case -> x_x, 3.14 -> d.d: the character classes with runs collapsed."""
    classes = "".join("X" if c.isupper() else "x" if c.islower() else "d" if c.isdigit() else c for c in word)
    return re.sub(r"(.)\1+", r"\1", classes)


def word_features(words: Sequence[str], i: int) -> list[str]:
    """The hand-made features of word i of a sentence, as strings."""
    w = words[i]
    low = w.lower()
    feats = [f"w={w}", f"lw={low}", f"shape={shape(w)}", f"first={i == 0}"]
    feats += [f"pre{k}={low[:k]}" for k in (1, 2, 3) if len(low) >= k]
    feats += [f"suf{k}={low[-k:]}" for k in (1, 2, 3) if len(low) >= k]
    for off in OFFSETS:
        j = i + off
        other = words[j] if 0 <= j < len(words) else ("<s>" if j < 0 else "</s>")
        feats += [f"lw{off:+d}={other.lower()}", f"shape{off:+d}={shape(other)}"]
    return feats


class Featurizer:
    """Feature strings -> ids, the vocabulary fixed by the training set (unseen features dropped)."""

    def __init__(self, train: TaggedData):
        self.index: dict[str, int] = {}
        for words in train.words:
            for i in range(len(words)):
                for f in word_features(words, i):
                    self.index.setdefault(f, len(self.index))

    def __call__(self, data: TaggedData) -> list[list[int]]:
        return [[self.index[f] for f in word_features(words, i) if f in self.index]
                for words in data.words for i in range(len(words))]


def predict_tags(clf: SparseLogisticRegression, features: list[list[int]], data: TaggedData,
                 names: list[str]) -> list[list[str]]:
    flat = clf.predict(features)
    out, start = [], 0
    for words in data.words:
        out.append([names[k] for k in flat[start:start + len(words)]])
        start += len(words)
    return out


def baseline(train_file: str, validation_file: str, test_file: str, tokens_field: str = "tokens",
             tags_field: str = "tags", l2: float | None = None, max_iter: int = 300) -> dict:
    """Fit on train, pick the L2 penalty on validation (entity F1), report validation and test scores."""
    started = time.monotonic()
    train, val, test = (read_tagged(p, tokens_field, tags_field) for p in (train_file, validation_file, test_file))
    names = tag_names(train)
    featurize = Featurizer(train)
    y = [k for tags in encode_tags(train, names) for k in tags]
    encode_tags(val, names), encode_tags(test, names)  # unknown tags: one clear error
    x_train, x_val, x_test = featurize(train), featurize(val), featurize(test)
    scored = []
    for value in ([l2] if l2 is not None else L2_GRID):
        clf = fit_sparse_logistic_regression(x_train, y, len(featurize.index), len(names), value, max_iter)
        m = entity_metrics(val.tags, predict_tags(clf, x_val, val, names))
        print(f"l2 {value:g}: validation entity F1 {m['entity_f1']:.4f}", file=sys.stderr)
        scored.append((m["entity_f1"], -value, value, clf, m))
    _, _, best_l2, clf, val_m = max(scored, key=lambda s: s[:3])
    test_m = entity_metrics(test.tags, predict_tags(clf, x_test, test, names))
    result = {f"validation_{k}": val_m[k] for k in ("entity_f1", "entity_precision", "entity_recall", "token_accuracy")}
    result.update({f"test_{k}": test_m[k] for k in ("entity_f1", "entity_precision", "entity_recall", "token_accuracy")})
    result.update(l2=best_l2, labels=names, features=len(featurize.index), num_train=len(train.words),
                  num_validation=len(val.words), num_test=len(test.words), num_test_entities=test_m["gold_entities"],
                  seconds=round(time.monotonic() - started, 1))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True)
    parser.add_argument("--validation", required=True, help="picks the L2 penalty (entity F1)")
    parser.add_argument("--test", required=True)
    parser.add_argument("--tokens-field", default="tokens")
    parser.add_argument("--tags-field", default="tags")
    parser.add_argument("--l2", type=float, default=None, help=f"fixed penalty (default: best of {L2_GRID})")
    parser.add_argument("--max-iter", type=int, default=300, help="L-BFGS iterations per fit")
    parser.add_argument("--out", default="", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    result = baseline(args.train, args.validation, args.test, args.tokens_field, args.tags_field, args.l2,
                      args.max_iter)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    run_cli(main)
