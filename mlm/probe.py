"""Linear probe: frozen encoder features -> logistic regression, reporting accuracy.

    python -m mlm.probe <checkpoint> --train train.jsonl --test test.jsonl [--validation dev.jsonl]

Fine-tuning measures what an encoder can become; a probe measures what it already encodes,
with no training of the encoder, in seconds. Features are the final hidden states pooled
over real tokens (mean, default) or at [CLS], standardized with the training set's
statistics; the classifier is multinomial logistic regression with an L2 penalty, fitted
full-batch with L-BFGS in float64 (deterministic, no scikit-learn needed). With a
validation file the penalty is picked from a small grid by validation accuracy.
`--random-init` probes the same architecture with random weights: the baseline a
pretrained encoder has to beat.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mlm.errors import UserError, run_cli
from mlm.finetune import classification_metrics, encode_labels, label_names, pad_batch, read_labeled, tokenize
from mlm.tokenizer import PAD

L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


@torch.no_grad()
def extract_features(model: Any, tokenizer: Any, texts: Sequence[str], pooling: str = "mean",
                     batch_size: int = 64, max_len: int = 0) -> Tensor:
    """(n, hidden) float32 features of the frozen encoder, in the order of `texts`."""
    from mlm.finetune import LabeledData

    if pooling not in ("mean", "cls"):
        raise UserError(f"pooling must be mean or cls, got {pooling!r}")
    model.eval()
    device = next(model.parameters()).device
    max_len = min(max_len or model.cfg.max_seq_len, model.cfg.max_seq_len)
    rows = tokenize(tokenizer, LabeledData(list(texts), None, [""] * len(texts), "texts"), max_len)
    pad_id = tokenizer.token_to_id(PAD)
    order = np.argsort([len(r) for r in rows], kind="stable")
    out = torch.empty(len(rows), model.cfg.hidden_size)
    for start in range(0, len(rows), batch_size):
        idx = order[start:start + batch_size]
        ids, mask = pad_batch([rows[i] for i in idx], pad_id)
        hidden = model.encode(ids.to(device), mask.to(device)).float()  # (b, s, h)
        if pooling == "cls":
            pooled = hidden[:, 0]
        else:
            m = mask.to(device, hidden.dtype).unsqueeze(-1)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
        out[torch.as_tensor(idx)] = pooled.cpu()
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


def linear_probe(model: Any, tokenizer: Any, train_file: str, test_file: str, validation_file: str = "",
                 text_field: str = "text", label_field: str = "label", pooling: str = "mean",
                 l2: float | None = None, batch_size: int = 64) -> dict[str, Any]:
    """Probe `model` on labeled files; returns accuracies (train, validation, test) and the chosen l2."""
    train = read_labeled(train_file, text_field, label_field)
    test = read_labeled(test_file, text_field, label_field)
    val = read_labeled(validation_file, text_field, label_field) if validation_file else None
    names = label_names(train.labels)
    if len(names) < 2:
        raise UserError(f"{train_file}: only one label; a probe needs at least two")
    y_train, y_test = encode_labels(train, names), encode_labels(test, names)
    feats = lambda d: extract_features(model, tokenizer, d.texts, pooling, batch_size)  # noqa: E731
    x_train, x_test = feats(train), feats(test)
    result: dict[str, Any] = {"pooling": pooling, "labels": names, "num_train": len(y_train), "num_test": len(y_test)}
    if val is not None:
        y_val, x_val = encode_labels(val, names), feats(val)
        grid = [l2] if l2 is not None else list(L2_GRID)
        scored = []
        for value in grid:
            clf = fit_logistic_regression(x_train, y_train, len(names), value)
            scored.append((classification_metrics(clf.predict(x_val), y_val, len(names))["accuracy"], -value, value))
        result["validation_accuracy"], _, l2 = max(scored)
    elif l2 is None:
        l2 = 1e-2
    clf = fit_logistic_regression(x_train, y_train, len(names), l2)
    test_m = classification_metrics(clf.predict(x_test), y_test, len(names))
    result.update(l2=l2, train_accuracy=classification_metrics(clf.predict(x_train), y_train, len(names))["accuracy"],
                  test_accuracy=test_m["accuracy"], test_macro_f1=test_m["macro_f1"],
                  majority_baseline_test_accuracy=float(np.mean(np.asarray(y_test) == np.bincount(
                      y_train, minlength=len(names)).argmax())))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlm.probe", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="checkpoint folder or a run's output_dir")
    parser.add_argument("--train", required=True, help="labeled .jsonl/.csv/.tsv to fit the probe on")
    parser.add_argument("--test", required=True, help="labeled file to report accuracy on")
    parser.add_argument("--validation", default="", help="labeled file to choose the L2 penalty on")
    parser.add_argument("--text-field", default="text")
    parser.add_argument("--label-field", default="label")
    parser.add_argument("--pooling", choices=("mean", "cls"), default="mean")
    parser.add_argument("--l2", type=float, default=None, help="L2 penalty (default: chosen on --validation, else 0.01)")
    parser.add_argument("--random-init", action="store_true",
                        help="probe the same architecture with random weights (baseline)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights for --random-init")
    args = parser.parse_args(argv)
    from mlm.checkpoint import load_pretrained

    model, tokenizer = load_pretrained(args.checkpoint)
    if args.random_init:
        torch.manual_seed(args.seed)
        model.reset_parameters()
    result = linear_probe(model, tokenizer, args.train, args.test, args.validation, args.text_field,
                          args.label_field, args.pooling, args.l2)
    result["checkpoint"] = args.checkpoint
    result["random_init"] = args.random_init
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    run_cli(main)
