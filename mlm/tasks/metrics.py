"""Task metrics, computed from predictions and gold labels (numpy, no scikit-learn needed)."""
from __future__ import annotations

from typing import Sequence

import numpy as np


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
