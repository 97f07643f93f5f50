"""The one training step and the masked-LM evaluation, used by pretraining, fine-tuning and the experiments.

`train_step` takes any objective that returns a summed loss over a micro-batch's targets, so
pretraining (masked cross-entropy) and fine-tuning (classification, tagging, regression) share
gradient accumulation, data parallelism, mixed precision, clipping and the skipping of
non-finite steps. `MaskedBatches` makes the masked global batch of any step a pure function of
(seed, step): resuming is arithmetic, never a replay of the data, and N ranks see exactly the
batches of one process with the same global batch.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from mlm.collate import IGNORE_INDEX, MLMCollator
from mlm.config import CollateConfig
from mlm.data import BatchPlan, BlockDataset
from mlm.errors import UserError
from mlm.optim import value_at
from mlm.runtime import Runtime

Batch = dict[str, torch.Tensor]
LossFn = Callable[[nn.Module, Batch], torch.Tensor]  # summed loss over the batch's targets, fp32 scalar


# ---------------------------------------------------------------- batches

def build_collator(c: CollateConfig, tokenizer: Any, fraction: float = 0.0) -> MLMCollator:
    """The run's masking collator with the rates of `fraction` of training (its masks come from a
    per-step generator, so no seed here)."""
    p, mask, rand = mask_rates(c, fraction)
    return MLMCollator.from_tokenizer(tokenizer, mlm_probability=p, mask_replace_prob=mask, random_replace_prob=rand,
                                      strategy=c.strategy, exact_count=c.exact_count)


def eval_collator(c: CollateConfig, tokenizer: Any, mlm_probability: float | None) -> MLMCollator:
    """The validation collator: the rates training ends on, or a fixed `mlm_probability`."""
    collator = build_collator(c, tokenizer, fraction=1.0)
    if mlm_probability is not None:
        collator.set_rates(mlm_probability, collator.mask_replace_prob, collator.random_replace_prob)
    return collator


def mask_rates(c: CollateConfig, fraction: float) -> tuple[float, float, float]:
    """(mlm_probability, mask_replace_prob, random_replace_prob) at `fraction` (0..1) of training."""
    sch = c.schedule
    end = lambda value, start: start if value is None else value  # noqa: E731
    return (value_at(fraction, c.mlm_probability, end(sch.mlm_probability_end, c.mlm_probability), sch.kind,
                     sch.steps),
            value_at(fraction, c.mask_replace_prob, end(sch.mask_replace_prob_end, c.mask_replace_prob),
                     "constant" if sch.kind == "steps" else sch.kind),
            value_at(fraction, c.random_replace_prob, end(sch.random_replace_prob_end, c.random_replace_prob),
                     "constant" if sch.kind == "steps" else sch.kind))


def batch_plan(batch_size: int, micro_batch_size: int, world_size: int) -> tuple[int, int]:
    """(micro_batch_size, accumulation_steps) with global = micro × accumulation × world size."""
    micro = micro_batch_size or batch_size // world_size
    if micro <= 0 or batch_size % (micro * world_size):
        raise UserError(
            f"train.batch_size ({batch_size}) must equal train.micro_batch_size ({micro}) × accumulation "
            f"× world size ({world_size}); {batch_size} is not divisible by {micro} × {world_size} = "
            f"{micro * world_size}")
    return micro, batch_size // (micro * world_size)


class MaskedBatches:
    """The masked global batch of any step, as a pure function of (seed, step): O(1) resume.

    Which blocks: `mlm.data.BatchPlan` (a per-epoch permutation of the blocks). Which masks: the
    collator driven by a generator seeded with (seed, step). Every rank builds the same global
    batch and keeps its slice (`split_for_rank`).
    """

    def __init__(self, dataset: BlockDataset, collator: MLMCollator, batch_size: int, seed: int,
                 schedule: CollateConfig | None = None):
        if len(dataset) == 0:
            raise UserError("the training split has no blocks: the corpus is smaller than one block "
                            "(data.seq_len tokens); add text or lower data.seq_len")
        self.dataset, self.collator, self.seed, self.schedule = dataset, collator, seed, schedule
        self.plan = BatchPlan(len(dataset), batch_size, seed)

    def epoch_of(self, step: int) -> float:
        return self.plan.epoch_of(step)

    def get(self, step: int, fraction: float = 0.0) -> Batch:
        """The batch of `step`; with a schedule, masked at the rates of `fraction` of training."""
        if self.schedule is not None and self.schedule.schedule.kind != "constant":
            self.collator.set_rates(*mask_rates(self.schedule, fraction))
        blocks = self.dataset[self.plan.indices(step)]  # (batch, seq)
        rng = np.random.default_rng([self.seed, step])
        return without_full_mask(self.collator(blocks, generator=rng))


def without_full_mask(batch: Batch) -> Batch:
    """Drop an all-ones attention_mask (packed blocks): the model then takes its dense path
    without checking the mask on the device (a host sync and a graph break under compile)."""
    mask = batch.get("attention_mask")
    if mask is not None and bool(mask.all()):
        batch = {k: v for k, v in batch.items() if k != "attention_mask"}
    return batch


def split_for_rank(batch: Batch, rank: int, world: int, micro: int, accum: int) -> list[Batch]:
    """This rank's `accum` micro-batches of `micro` rows from the global batch."""
    rows = micro * accum
    mine = {k: v[rank * rows:(rank + 1) * rows] for k, v in batch.items()}
    return [{k: v[i * micro:(i + 1) * micro] for k, v in mine.items()} for i in range(accum)]


# ---------------------------------------------------------------- the step

@dataclass
class StepResult:
    loss: float  # mean loss over the global batch's targets
    grad_norm: float
    targets: int  # targets in the global batch (masked tokens for MLM)
    skipped: bool  # non-finite loss or gradient: no update


def masked_lm_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Summed masked cross-entropy of an MLM batch (the pretraining objective)."""
    return model(batch["input_ids"], attention_mask=batch.get("attention_mask"), labels=batch["labels"],
                 reduction="sum").loss


def count_targets(batch: Batch) -> int:
    """Targets a batch contributes to the loss: labels that are not IGNORE_INDEX (one per row for
    float regression targets)."""
    labels = batch["labels"]
    if labels.is_floating_point():
        return int(labels.shape[0])
    return int((labels != IGNORE_INDEX).sum())


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, micro_batches: list[Batch], rt: Runtime,
               grad_clip: float, scaler: torch.amp.GradScaler | None = None,
               loss_fn: LossFn = masked_lm_loss) -> StepResult:
    """One optimizer step over gradient-accumulated micro-batches.

    Each micro-batch contributes (sum of its losses) / (targets in the global batch), so
    accumulation and data parallelism give the same gradient as one big batch. A step with a
    non-finite loss or gradient is skipped (no update) and reported.
    """
    count = torch.tensor(float(sum(count_targets(b) for b in micro_batches)), device=rt.device)
    if rt.distributed:
        dist.all_reduce(count)
    denom = count.clamp(min=1.0)
    scale = float(rt.world_size)  # DDP averages gradients over ranks; scale so the average is the global mean
    total = torch.zeros((), device=rt.device)
    for i, mb in enumerate(micro_batches):
        mb = {k: v.to(rt.device, non_blocking=True) for k, v in mb.items()}
        last = i == len(micro_batches) - 1
        no_sync = rt.distributed and not last and hasattr(model, "no_sync")
        with model.no_sync() if no_sync else contextlib.nullcontext():
            with rt.autocast():
                summed = loss_fn(model, mb)
            loss = summed.float() / denom
            backward_loss = loss * scale
            (scaler.scale(backward_loss) if scaler is not None else backward_loss).backward()
        total += loss.detach()
    if rt.distributed:
        dist.all_reduce(total)
    return _apply_update(optimizer, total, grad_clip, scaler, int(count))


def _apply_update(optimizer: torch.optim.Optimizer, total: torch.Tensor, grad_clip: float,
                  scaler: torch.amp.GradScaler | None, count: int) -> StepResult:
    if scaler is not None:
        scaler.unscale_(optimizer)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
    finite = bool(torch.isfinite(total)) and bool(torch.isfinite(grad_norm))
    if scaler is not None:
        if finite:
            scaler.step(optimizer)
        scaler.update()
    elif finite:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(float(total), float(grad_norm), count, not finite)


# ---------------------------------------------------------------- masked-LM evaluation

@torch.no_grad()
def evaluate(model: nn.Module, dataset: BlockDataset, collator: MLMCollator, rt: Runtime, batch_size: int,
             max_batches: int, seed: int) -> dict[str, float]:
    """Masked loss, masked-token accuracy with two standard errors, and perplexity; fixed masking seed.

    `eval_accuracy_stderr` is the standard error over the random masks for this validation text,
    sqrt(a(1-a)/N) with N masked tokens: how much the figure moves with another eval.seed, and the
    noise that matters when two models are compared on the same split. `eval_accuracy_stderr_blocks`
    also counts which text was held out, treating each block as a cluster of masked tokens:
    se² = k/(k-1) · Σ(c_i - a·n_i)² / N², with c_i correct of n_i masked in block i and k blocks; it
    is larger (text varies more than masks) and says how much the figure would move with another split.
    """
    was_training = model.training
    model.eval()
    n = len(dataset)
    n_batches = math.ceil(n / batch_size)
    if max_batches:
        n_batches = min(n_batches, max_batches)
    # loss, correct, masked, Σc², Σcn, Σn², blocks with a masked token
    sums = torch.zeros(7, dtype=torch.float64, device=rt.device)
    for b in range(rt.rank, n_batches, rt.world_size):  # each rank a strided share, reduced at the end
        idx = np.arange(b * batch_size, min(n, (b + 1) * batch_size))
        batch = without_full_mask(collator(dataset[idx], generator=np.random.default_rng([seed, b])))
        batch = {k: v.to(rt.device) for k, v in batch.items()}
        with rt.autocast():
            out = model(batch["input_ids"], attention_mask=batch.get("attention_mask"), labels=batch["labels"],
                        reduction="sum")
        hit = (out.logits.argmax(-1) == out.target).double()  # (m,) in row-major order of the labels
        row = (batch["labels"] != IGNORE_INDEX).nonzero()[:, 0]  # (m,) block of each masked token
        c = torch.zeros(len(idx), dtype=torch.float64, device=rt.device).index_add_(0, row, hit)
        m = torch.bincount(row, minlength=len(idx)).double()
        sums += torch.stack([out.loss.double(), hit.sum(), m.sum(), (c * c).sum(), (c * m).sum(), (m * m).sum(),
                             (m > 0).sum().double()])
    if rt.distributed:
        dist.all_reduce(sums)
    model.train(was_training)
    loss_sum, correct, count, cc, cm, mm, blocks = sums.tolist()
    count = max(1.0, count)
    accuracy, loss = correct / count, loss_sum / count
    spread = max(0.0, cc - 2 * accuracy * cm + accuracy * accuracy * mm)
    by_blocks = math.sqrt(blocks / (blocks - 1) * spread) / count if blocks > 1 else float("nan")
    return {"eval_loss": loss, "eval_accuracy": accuracy,
            "eval_accuracy_stderr": math.sqrt(accuracy * (1 - accuracy) / count),
            "eval_accuracy_stderr_blocks": by_blocks,
            "eval_perplexity": math.exp(min(loss, 50.0)), "eval_masked_tokens": int(count)}
