"""Linear probe: frozen encoder features -> logistic regression.

Fine-tuning measures what an encoder can become; a probe measures what it already encodes, with
no training of the encoder, in seconds. Features are the final hidden states pooled over real
tokens (mean) or at [CLS], standardized with the training set's statistics; the classifier is
multinomial logistic regression with an L2 penalty, fitted full-batch with L-BFGS in float64
(deterministic, no scikit-learn needed), the penalty picked on a validation set.

The same fit over sparse binary features (`fit_sparse_logistic_regression`) is the classic
baseline without a neural encoder: e.g. per-token tagging from hand-made window features
(scripts/token_baseline.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mlm.errors import UserError
from mlm.padding import pad_batch
from mlm.tasks.encoding import encode_texts
from mlm.tasks.heads import pool
from mlm.tasks.metrics import classification_metrics, majority_accuracy
from mlm.tasks.records import encode_labels, label_names, read_labeled
from mlm.tokenizer import PAD

L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


@torch.no_grad()
def extract_features(model: Any, tokenizer: Any, texts: Sequence[str], pooling: str = "mean",
                     batch_size: int = 64, max_len: int = 0, pairs: Sequence[str] | None = None) -> Tensor:
    """(n, hidden) float32 features of the frozen encoder, in the order of `texts` (with `pairs`, of
    each [CLS] text [SEP] pair [SEP])."""
    if pooling not in ("mean", "cls"):
        raise UserError(f"pooling must be mean or cls, got {pooling!r}")
    model.eval()
    device = next(model.parameters()).device
    max_len = min(max_len or model.cfg.max_seq_len, model.cfg.max_seq_len)
    rows = encode_texts(tokenizer, texts, pairs, max_len)
    pad_id = tokenizer.token_to_id(PAD)
    order = np.argsort([len(r) for r in rows], kind="stable")
    out = torch.empty(len(rows), model.cfg.hidden_size)
    for start in range(0, len(rows), batch_size):
        idx = order[start:start + batch_size]
        ids, mask = pad_batch([rows[i] for i in idx], pad_id)
        hidden = model.encode(ids.to(device), mask.to(device)).float()  # (b, s, h)
        out[torch.as_tensor(idx)] = pool(hidden, mask.to(device), pooling).cpu()  # type: ignore[arg-type]
    return out


@dataclass
class LogisticRegression:
    """Standardize with (mean, std), then softmax(x W^T + b)."""
    weight: Tensor  # (classes, features)
    bias: Tensor  # (classes,)
    mean: Tensor
    std: Tensor

    def logits(self, x: Tensor) -> Tensor:
        z = (x.double() - self.mean) / self.std
        return z @ self.weight.T + self.bias

    def predict(self, x: Tensor) -> list[int]:
        return self.logits(x).argmax(-1).tolist()


def fit_logistic_regression(x: Tensor, y: Sequence[int], num_classes: int, l2: float = 1e-3,
                            max_iter: int = 500) -> LogisticRegression:
    """Multinomial logistic regression: mean cross-entropy + l2/2 * |W|^2, L-BFGS, float64."""
    x = x.double()
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    z = (x - mean) / std
    target = torch.as_tensor(list(y), dtype=torch.long)
    weight = torch.zeros(num_classes, z.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9,
                            tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z @ weight.T + bias, target) + 0.5 * l2 * (weight ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return LogisticRegression(weight.detach(), bias.detach(), mean, std)


def pick_l2(x_train: Tensor, y_train: list[int], x_val: Tensor, y_val: list[int], num_classes: int,
            grid: Sequence[float] = L2_GRID) -> tuple[float, float]:
    """(best validation accuracy, its l2) over `grid`; ties go to the stronger penalty."""
    scored = []
    for value in grid:
        clf = fit_logistic_regression(x_train, y_train, num_classes, value)
        scored.append((classification_metrics(clf.predict(x_val), y_val, num_classes)["accuracy"], -value, value))
    accuracy, _, l2 = max(scored)
    return accuracy, l2


def linear_probe(model: Any, tokenizer: Any, train_file: str, test_file: str, validation_file: str = "",
                 text_field: str = "text", label_field: str = "label", pooling: str = "mean",
                 l2: float | None = None, batch_size: int = 64, pair_field: str = "") -> dict[str, Any]:
    """Probe `model` on labelled files (text pairs with `pair_field`); returns accuracies (train,
    validation, test) and the chosen l2."""
    train = read_labeled(train_file, text_field, label_field, pair_field)
    test = read_labeled(test_file, text_field, label_field, pair_field)
    val = read_labeled(validation_file, text_field, label_field, pair_field) if validation_file else None
    names = label_names(train.labels)
    if len(names) < 2:
        raise UserError(f"{train_file}: only one label; a probe needs at least two")
    y_train, y_test = encode_labels(train, names), encode_labels(test, names)
    feats = lambda d: extract_features(model, tokenizer, d.texts, pooling, batch_size, pairs=d.pairs)  # noqa: E731
    x_train, x_test = feats(train), feats(test)
    result: dict[str, Any] = {"pooling": pooling, "labels": names, "num_train": len(y_train), "num_test": len(y_test)}
    if val is not None:
        result["validation_accuracy"], l2 = pick_l2(x_train, y_train, feats(val), encode_labels(val, names),
                                                    len(names), [l2] if l2 is not None else L2_GRID)
    elif l2 is None:
        l2 = 1e-2
    clf = fit_logistic_regression(x_train, y_train, len(names), l2)
    test_m = classification_metrics(clf.predict(x_test), y_test, len(names))
    result.update(l2=l2, train_accuracy=classification_metrics(clf.predict(x_train), y_train, len(names))["accuracy"],
                  test_accuracy=test_m["accuracy"], test_macro_f1=test_m["macro_f1"],
                  majority_baseline_test_accuracy=majority_accuracy(y_train, y_test, len(names)))
    return result


# ---------------------------------------------------------------- sparse features (hand-made baselines)

@dataclass
class SparseLogisticRegression:
    """softmax(Σ_f W[:, f] + b) over the active binary features f of an example."""
    weight: Tensor  # (features, classes)
    bias: Tensor  # (classes,)

    def logits(self, features: Sequence[Sequence[int]]) -> Tensor:
        index, offsets = sparse_batch(features)
        return F.embedding_bag(index, self.weight, offsets, mode="sum") + self.bias

    def predict(self, features: Sequence[Sequence[int]]) -> list[int]:
        return self.logits(features).argmax(-1).tolist()


def sparse_batch(features: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
    """(flat feature ids, start offset of each example) for `embedding_bag`."""
    lengths = torch.as_tensor([len(f) for f in features], dtype=torch.long)
    offsets = torch.zeros(len(features), dtype=torch.long)
    offsets[1:] = torch.cumsum(lengths, 0)[:-1]
    index = torch.as_tensor([i for f in features for i in f], dtype=torch.long)
    return index, offsets


def fit_sparse_logistic_regression(features: Sequence[Sequence[int]], y: Sequence[int], num_features: int,
                                   num_classes: int, l2: float = 1e-3, max_iter: int = 300) -> SparseLogisticRegression:
    """Multinomial logistic regression over binary features (each example: the ids of its active
    features): mean cross-entropy + l2/2 * |W|^2, full-batch L-BFGS in float64, as
    `fit_logistic_regression` but without a dense (examples, features) matrix."""
    index, offsets = sparse_batch(features)
    target = torch.as_tensor(list(y), dtype=torch.long)
    weight = torch.zeros(num_features, num_classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9,
                            tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        logits = F.embedding_bag(index, weight, offsets, mode="sum") + bias
        loss = F.cross_entropy(logits, target) + 0.5 * l2 * (weight ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return SparseLogisticRegression(weight.detach(), bias.detach())
