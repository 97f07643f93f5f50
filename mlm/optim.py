"""The optimizer and the schedules of a run, shared by pretraining and fine-tuning.

Every schedule is a pure function of the run's progress: the step (of `max_steps`), or, for a
run with a time budget, the fraction of the budget spent. A resumed run therefore continues on the
same curve without saving a scheduler object: bit-exact for step schedules; for a budget, the
elapsed time is saved in the checkpoint, so the curve continues where it was, but which step lands
on which fraction depends on the machine's speed and cannot be bit-exact.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Literal, Sequence

import torch

ScheduleKind = Literal["cosine", "linear", "constant"]
RateSchedule = Literal["constant", "linear", "cosine", "steps"]


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, betas: tuple[float, float],
                    eps: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only: biases, norms and other vectors get none.

    Fused on CUDA (one kernel for all parameters); the default (foreach) implementation on CPU.
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=device.type == "cuda")


def lr_at(step: int, lr: float, warmup_steps: int, max_steps: int, schedule: ScheduleKind,
          min_lr_ratio: float) -> float:
    """Linear warmup to `lr` over `warmup_steps`, then cosine or linear decay to `lr * min_lr_ratio`
    at `max_steps` (or constant)."""
    if warmup_steps and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    span = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    floor = lr * min_lr_ratio
    if schedule == "linear":
        return floor + (lr - floor) * (1.0 - progress)
    return floor + (lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def lr_at_fraction(fraction: float, lr: float, warmup_fraction: float, schedule: ScheduleKind,
                   min_lr_ratio: float) -> float:
    """The learning rate at `fraction` (0..1) of a run measured by time: linear warmup over the first
    `warmup_fraction`, then cosine or linear decay to `lr * min_lr_ratio` at 1 (or constant)."""
    fraction = min(max(fraction, 0.0), 1.0)
    if warmup_fraction > 0 and fraction < warmup_fraction:
        return lr * max(fraction / warmup_fraction, 1e-3)
    if schedule == "constant":
        return lr
    progress = (fraction - warmup_fraction) / max(1e-12, 1.0 - warmup_fraction)
    floor = lr * min_lr_ratio
    if schedule == "linear":
        return floor + (lr - floor) * (1.0 - progress)
    return floor + (lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def value_at(fraction: float, start: float, end: float, kind: RateSchedule,
             steps: Sequence[Sequence[float]] = ()) -> float:
    """A scheduled value at `fraction` (0..1) of training: constant `start`; linear or cosine from
    `start` to `end`; or `steps`, rows [from_fraction, value] (the last row whose fraction has been
    reached gives the value; before the first row, `start`)."""
    fraction = min(max(fraction, 0.0), 1.0)
    if kind == "constant":
        return start
    if kind == "linear":
        return start + (end - start) * fraction
    if kind == "cosine":
        return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * fraction))
    value = start
    for at, v in sorted(steps):
        if fraction >= at:
            value = v
    return value


class BudgetClock:
    """Wall time of a run measured against its budget; the time spent before a resume is carried in.

    `now` is the time source (seconds); the trainer uses `time.monotonic`.
    """

    def __init__(self, budget_seconds: float, elapsed_before: float = 0.0,
                 now: Callable[[], float] = time.monotonic):
        self.budget, self.before, self.now = budget_seconds, elapsed_before, now
        self.started = now()

    def elapsed(self) -> float:
        """Seconds spent in this run, earlier sessions included."""
        return self.before + self.now() - self.started

    def fraction(self) -> float:
        """Share of the budget spent (0 with no budget)."""
        return min(1.0, self.elapsed() / self.budget) if self.budget > 0 else 0.0

    def spent(self) -> bool:
        return self.budget > 0 and self.elapsed() >= self.budget
