"""Task metrics, computed from predictions and gold labels (numpy, no scikit-learn or seqeval needed).

Why our own: the numbers in results.json must mean what users expect from the usual tools, so
each function states which tool it matches. Entity scores follow seqeval's default mode (the one
`seqeval.metrics.f1_score(y_true, y_pred)` uses, not `mode="strict"`): an entity is an exact
(type, first word, last word) span, and an I- tag that does not continue an entity of its type
starts a new one, as conlleval reads it. Regression reports Pearson and Spearman (ties get their
average rank, as scipy.stats.spearmanr) and the mean squared error.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

OUTSIDE = "O"


# ---------------------------------------------------------------- classification

def classification_metrics(pred: Sequence[int], gold: Sequence[int], num_labels: int) -> dict[str, float]:
    """Accuracy and macro-F1: the unweighted mean of per-label F1 over the labels that occur in
    `gold` or `pred` (so a rare label counts as much as a frequent one)."""
    p, g = np.asarray(pred), np.asarray(gold)
    f1s = []
    for c in range(num_labels):
        tp = int(((p == c) & (g == c)).sum())
        fp = int(((p == c) & (g != c)).sum())
        fn = int(((p != c) & (g == c)).sum())
        if tp + fp + fn:
            f1s.append(2 * tp / (2 * tp + fp + fn))
    return {"accuracy": float((p == g).mean()) if len(g) else 0.0,
            "macro_f1": float(np.mean(f1s)) if f1s else 0.0}


def majority_accuracy(train_labels: Sequence[int], test_labels: Sequence[int], num_labels: int) -> float:
    """Accuracy of always predicting the most frequent training label."""
    majority = np.bincount(np.asarray(train_labels), minlength=num_labels).argmax()
    return float(np.mean(np.asarray(test_labels) == majority))


# ---------------------------------------------------------------- entities (BIO / IOB2 tags)

def split_tag(tag: str) -> tuple[str, str]:
    """("B" | "I" | "O", type): "B-PER" -> ("B", "PER"), "O" -> ("O", "")."""
    if tag == OUTSIDE:
        return OUTSIDE, ""
    return tag[0], tag[2:]


def entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """(type, first word, last word) of every entity in one sentence's BIO tags, as seqeval's
    default mode reads them: an entity ends before a B-, an O, or a tag of another type, and an
    I-X after O or after another type starts a new X entity (it is not dropped)."""
    found = []
    start, kind = -1, ""
    for i, tag in enumerate(list(tags) + [OUTSIDE]):
        prefix, typ = split_tag(tag)
        if start >= 0 and (prefix in ("B", OUTSIDE) or typ != kind):
            found.append((kind, start, i - 1))
            start = -1
        if prefix != OUTSIDE and start < 0:
            start, kind = i, typ
    return found


def entity_metrics(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, float]:
    """Micro precision / recall / F1 over exact entity spans (type and both ends), and token accuracy,
    over sentences of tags (gold and pred aligned word by word). 0 where a ratio is undefined,
    as seqeval."""
    if len(gold) != len(pred) or any(len(g) != len(p) for g, p in zip(gold, pred)):
        raise ValueError("gold and predicted tags must have the same sentences and lengths")
    true = {(s,) + e for s, tags in enumerate(gold) for e in entities(tags)}
    found = {(s,) + e for s, tags in enumerate(pred) for e in entities(tags)}
    correct = len(true & found)
    precision = correct / len(found) if found else 0.0
    recall = correct / len(true) if true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"entity_precision": precision, "entity_recall": recall, "entity_f1": f1,
            "token_accuracy": token_accuracy(gold, pred),
            "gold_entities": len(true), "predicted_entities": len(found), "correct_entities": correct}


def token_accuracy(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> float:
    """Share of words whose predicted tag equals the gold tag (seqeval's accuracy_score)."""
    total = sum(len(g) for g in gold)
    hits = sum(a == b for g, p in zip(gold, pred) for a, b in zip(g, p))
    return hits / total if total else 0.0


def majority_tagging(train: Sequence[Sequence[str]], test: Sequence[Sequence[str]]) -> dict[str, float]:
    """Scores of tagging every test word with the most frequent training tag (usually O: F1 0)."""
    counts: dict[str, int] = {}
    for tags in train:
        for tag in tags:
            counts[tag] = counts.get(tag, 0) + 1
    top = max(sorted(counts), key=counts.__getitem__)
    return entity_metrics(test, [[top] * len(tags) for tags in test])


def lexical_tagging(train_words: Sequence[Sequence[str]], train_tags: Sequence[Sequence[str]],
                    test_words: Sequence[Sequence[str]], test_tags: Sequence[Sequence[str]]) -> dict[str, float]:
    """Scores of tagging each test word with its most frequent tag in training (O for unseen words):
    what the word alone says, the floor a model that reads context has to clear."""
    seen: dict[str, dict[str, int]] = {}
    for words, tags in zip(train_words, train_tags):
        for word, tag in zip(words, tags):
            seen.setdefault(word, {}).setdefault(tag, 0)
            seen[word][tag] += 1
    best = {w: max(sorted(c), key=c.__getitem__) for w, c in seen.items()}
    return entity_metrics(test_tags, [[best.get(w, OUTSIDE) for w in words] for words in test_words])


# ---------------------------------------------------------------- regression

def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation; 0 when either side is constant (no linear relation to measure)."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    a, b = a - a.mean(), b - b.mean()
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else 0.0


def average_ranks(x: Sequence[float]) -> np.ndarray:
    """Ranks 1..n, tied values sharing the mean of their ranks."""
    values = np.asarray(x, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.arange(1, len(values) + 1)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]


def regression_metrics(pred: Sequence[float], gold: Sequence[float]) -> dict[str, float]:
    """Pearson, Spearman (Pearson of average ranks) and mean squared error."""
    p, g = np.asarray(pred, dtype=np.float64), np.asarray(gold, dtype=np.float64)
    if len(p) != len(g) or not len(g):
        raise ValueError("predictions and gold values must be non-empty and of the same length")
    return {"pearson": pearson(p, g), "spearman": pearson(average_ranks(p), average_ranks(g)),
            "mse": float(np.mean((p - g) ** 2))}


def constant_regression(train: Sequence[float], test: Sequence[float]) -> dict[str, float]:
    """Scores of always predicting the training mean (correlations are 0 by definition)."""
    return regression_metrics([float(np.mean(train))] * len(test), test)
