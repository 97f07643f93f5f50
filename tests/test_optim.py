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


def test_a_budget_schedule_warms_up_then_reaches_its_floor_at_the_budget():
    from mlm.optim import lr_at_fraction

    lr = lambda f: lr_at_fraction(f, 1e-3, 0.1, "cosine", 0.1)  # noqa: E731
    assert lr(0.05) == pytest.approx(0.5e-3)
    assert lr(0.1) == pytest.approx(1e-3)
    assert lr(0.55) == pytest.approx(0.55e-3)
    assert lr(1.0) == pytest.approx(1e-4) and lr(1.7) == pytest.approx(1e-4)
    assert lr_at_fraction(0.55, 1e-3, 0.1, "linear", 0.1) == pytest.approx(0.55e-3)


@pytest.mark.parametrize("kind, expected", [("constant", [0.3, 0.3, 0.3]), ("linear", [0.3, 0.2, 0.1]),
                                            ("cosine", [0.3, 0.2, 0.1]), ("steps", [0.3, 0.15, 0.05])])
def test_value_schedules_from_start_to_end(kind, expected):
    from mlm.optim import value_at

    got = [value_at(f, 0.3, 0.1, kind, [[0.0, 0.3], [0.5, 0.15], [0.9, 0.05]]) for f in (0.0, 0.5, 1.0)]
    assert got == pytest.approx(expected)


def test_the_budget_clock_carries_the_time_of_earlier_sessions():
    from mlm.optim import BudgetClock

    now = [100.0]
    clock = BudgetClock(60.0, elapsed_before=30.0, now=lambda: now[0])
    assert clock.fraction() == pytest.approx(0.5) and not clock.spent()
    now[0] += 30.0
    assert clock.fraction() == 1.0 and clock.spent() and clock.elapsed() == pytest.approx(60.0)
    assert BudgetClock(0.0).fraction() == 0.0 and not BudgetClock(0.0).spent()
