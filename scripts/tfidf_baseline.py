"""TF-IDF + logistic regression on a text classification task: what a user would try without a network.

    python scripts/tfidf_baseline.py --train t/train.jsonl --validation t/dev.jsonl --test t/test.jsonl

Features: word unigrams and bigrams (lower-cased, \\w+ tokens), kept when they occur in at least
`--min-df` training texts (at most `--max-features`, the most frequent), sublinear term frequency
(1 + log tf) times smoothed idf, each row L2-normalised. Classifier: multinomial logistic regression
with an L2 penalty (`mlm.tasks.linear_probe.fit_logistic_regression`, L-BFGS in float64, no
scikit-learn needed), the penalty picked on the validation file. Prints JSON with test accuracy and
macro-F1 in the keys `mlm.finetune` uses.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Sequence

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from mlm.tasks.linear_probe import fit_logistic_regression  # noqa: E402
from mlm.tasks.metrics import classification_metrics  # noqa: E402
from mlm.tasks.records import encode_labels, label_names, read_labeled  # noqa: E402

WORD = re.compile(r"\w+")
L2_GRID = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0, 10.0)


def terms(text: str) -> list[str]:
    words = WORD.findall(text.lower())
    return words + [f"{a} {b}" for a, b in zip(words, words[1:])]


class TfIdf:
    """Vocabulary and idf from the training texts; `transform` gives L2-normalised rows."""

    def __init__(self, texts: Sequence[str], min_df: int, max_features: int):
        df = Counter(t for text in texts for t in set(terms(text)))
        kept = [t for t, n in df.most_common(max_features) if n >= min_df]
        self.index = {t: i for i, t in enumerate(kept)}
        n = len(texts)
        self.idf = torch.tensor([math.log((1 + n) / (1 + df[t])) + 1 for t in kept], dtype=torch.float64)

    def transform(self, texts: Sequence[str]) -> torch.Tensor:
        x = torch.zeros(len(texts), len(self.index), dtype=torch.float64)
        for row, text in enumerate(texts):
            for term, count in Counter(terms(text)).items():
                col = self.index.get(term)
                if col is not None:
                    x[row, col] = 1 + math.log(count)
        x *= self.idf
        return x / x.norm(dim=1, keepdim=True).clamp(min=1e-12)


def tfidf_baseline(train_file: str, validation_file: str, test_file: str, min_df: int = 1,
                   max_features: int = 20000) -> dict:
    train, val, test = (read_labeled(f) for f in (train_file, validation_file, test_file))
    names = label_names(train.labels)
    y_train, y_val, y_test = (encode_labels(d, names) for d in (train, val, test))
    features = TfIdf(train.texts, min_df, max_features)
    x_train, x_val, x_test = (features.transform(d.texts) for d in (train, val, test))
    scored = []
    for l2 in L2_GRID:
        clf = fit_logistic_regression(x_train, y_train, len(names), l2)
        scored.append((classification_metrics(clf.predict(x_val), y_val, len(names))["accuracy"], -l2, l2))
    val_acc, _, l2 = max(scored)
    clf = fit_logistic_regression(x_train, y_train, len(names), l2)
    test_m = classification_metrics(clf.predict(x_test), y_test, len(names))
    return {"features": len(features.index), "l2": l2, "validation_accuracy": val_acc,
            "test_accuracy": test_m["accuracy"], "test_macro_f1": test_m["macro_f1"], "num_train": len(y_train)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True)
    parser.add_argument("--validation", required=True)
    parser.add_argument("--test", required=True)
    parser.add_argument("--min-df", type=int, default=1)
    parser.add_argument("--max-features", type=int, default=20000)
    args = parser.parse_args(argv)
    print(json.dumps(tfidf_baseline(args.train, args.validation, args.test, args.min_df, args.max_features)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
