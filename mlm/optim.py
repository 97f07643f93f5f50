"""The optimizer and its learning-rate schedule, shared by pretraining and fine-tuning.

The schedule is a pure function of the step, so a resumed run continues on the same curve without
saving a scheduler object.
"""
from __future__ import annotations

import math
from typing import Literal

import torch

ScheduleKind = Literal["cosine", "linear", "constant"]


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
