"""mlm.optim: AdamW groups and the learning-rate schedule."""
from __future__ import annotations

import pytest
import torch

from mlm.optim import build_optimizer, lr_at


def test_lr_schedule_warms_up_then_decays_to_floor():
    lr = lambda step: lr_at(step, 1e-3, 10, 110, "cosine", 0.1)  # noqa: E731
    assert lr(0) == pytest.approx(1e-4)
    assert lr(9) == pytest.approx(1e-3)
    assert lr(60) == pytest.approx(0.55e-3)
    assert lr(110) == pytest.approx(1e-4)
    assert lr_at(60, 1e-3, 10, 110, "linear", 0.1) == pytest.approx(0.55e-3)
    assert lr_at(100, 1e-3, 10, 110, "constant", 0.1) == pytest.approx(1e-3)


def test_weight_decay_applies_to_matrices_only():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    opt = build_optimizer(model, 1e-3, 0.1, (0.9, 0.98), 1e-6, torch.device("cpu"))
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.1 and [p.dim() for p in decayed["params"]] == [2]
    assert plain["weight_decay"] == 0.0 and all(p.dim() == 1 for p in plain["params"])
