"""Tiny models and batches shared by tests/model and tests/ops (`from model.cases import ...`)."""
from __future__ import annotations

import dataclasses
import itertools

import torch
import torch.nn.functional as F

from mlm.model import MLMModel, ModelConfig
from mlm.ops import Kernels

SPECIAL = [0, 1, 2, 3, 4]
VOCAB = 64
VARIANTS = [dict(norm=n, position=p, activation=a)
            for n, p, a in itertools.product(("pre", "post"), ("learned", "rotary"), ("gelu", "geglu"))]


def variant_id(v: dict) -> str:
    return "-".join(v.values())


def kernels_id(k: Kernels) -> str:
    """The fields that differ from `Kernels()`, e.g. "attention=matmul", or "auto"."""
    changed = [f"{f.name}={getattr(k, f.name)}" for f in dataclasses.fields(k) if getattr(k, f.name) != f.default]
    return ",".join(changed) or "auto"


def make_cfg(**overrides) -> ModelConfig:
    base = dict(vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                max_seq_len=16, special_token_ids=list(SPECIAL), layer_norm_eps=1e-12)
    base.update(overrides)
    return ModelConfig(**base)


def make_model(seed: int = 0, kernels: Kernels | None = None, **overrides) -> MLMModel:
    torch.manual_seed(seed)
    return MLMModel(make_cfg(**overrides), kernels).eval()


def make_batch(batch: int = 3, seq: int = 12, seed: int = 1, lengths: list[int] | None = None):
    """Random non-special ids, ~30% labelled positions (at least one per row); optional right padding."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(len(SPECIAL), VOCAB, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    if lengths is not None:
        for row, n in enumerate(lengths):
            mask[row, n:] = 0
            ids[row, n:] = 0  # the pad id
    pick = (torch.rand(batch, seq, generator=g) < 0.3) & (mask == 1)
    pick[:, 0] = mask[:, 0] == 1
    labels = torch.where(pick, ids, torch.full_like(ids, -100))
    return ids, mask, labels


def backward_of(model: MLMModel, loss: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(loss, gradient of every parameter) after `loss.backward()`."""
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}


def assert_same_training(a, b, loss_rtol: float, grad_rtol: float, atol: float = 1e-6) -> None:
    """Two `backward_of` results: equal losses, equal gradients for every parameter."""
    torch.testing.assert_close(a[0], b[0], rtol=loss_rtol, atol=atol)
    for name, grad in a[1].items():
        torch.testing.assert_close(grad, b[1][name], rtol=grad_rtol, atol=atol, msg=name)


def assert_sparse_trains_like_dense(ids, labels, kernels: Kernels | None = None, **overrides) -> None:
    """The model's own loss (sparse head, CPU filler rows, chunked loss) and the cross-entropy
    of its dense logits: equal values, and equal gradients for every parameter."""
    results = []
    for sparse in (True, False):
        model = make_model(kernels=kernels, **overrides).train()
        if sparse:
            loss = model(ids, labels=labels).loss
        else:
            logits = model(ids).logits
            loss = F.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1), ignore_index=-100)
        results.append(backward_of(model, loss))
    assert_same_training(*results, loss_rtol=1e-5, grad_rtol=1e-4)
