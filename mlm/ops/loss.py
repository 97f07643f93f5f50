"""The MLM loss: a summed fp32 cross-entropy that keeps only the logits, and CPU row buckets.

* `SummedCrossEntropy`: torch's cross-entropy value and gradient, computed in fp32 from logits
  in any dtype, with less memory at the step's peak: it saves only the logits, in their own
  dtype (bf16 under autocast), not an fp32 log-softmax. On CPU it works in `CPU_ROW_BUCKET`-row
  chunks, so its fp32 (rows, V) work buffers have one size every step.
* `round_up_rows`: on CPU every step allocating (m, V) tensors of a new size m makes glibc's
  heap fragment; resident memory then grows step after step (measured: +900 MB over 60 steps
  of the benchmark model). The predicted rows are padded with unlabelled filler rows to a
  multiple of `CPU_ROW_BUCKET`, so a handful of sizes are reused instead. CUDA's caching
  allocator copes with varying sizes, and compiled code plans its buffers: eager CPU only.

Shapes: m = predicted rows, V = vocabulary.
"""
from __future__ import annotations

import torch
from torch import Tensor

IGNORE_INDEX = -100
"""The label of a position that is not predicted (torch's cross-entropy default)."""
CPU_ROW_BUCKET = 64


class SummedCrossEntropy(torch.autograd.Function):
    """sum(cross_entropy(logits.float(), target)) over rows whose target is not -100.

    `SummedCrossEntropy.apply(logits, target, chunk)`: same value and gradient as
    `F.cross_entropy(logits.float(), target, ignore_index=-100, reduction="sum")`.
    `chunk` > 0 processes that many rows at a time, so the fp32 (rows, V) work buffers are
    (chunk, V); 0 does all rows at once (CUDA, torch.compile).
    """

    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor, chunk: int = 0) -> Tensor:  # logits: (m, V), target: (m,)
        valid = target != IGNORE_INDEX
        index = torch.where(valid, target, torch.zeros_like(target))  # (m,)
        picked = logits.gather(1, index[:, None]).squeeze(1).float()  # (m,), exact in any dtype
        if chunk <= 0 or logits.shape[0] <= chunk:
            lse = torch.logsumexp(logits.float(), dim=-1)  # (m,)
        else:
            lse = torch.cat([torch.logsumexp(part.float(), dim=-1) for part in logits.split(chunk)])
        ctx.save_for_backward(logits, index, valid)
        ctx.chunk = chunk
        return torch.where(valid, lse - picked, torch.zeros_like(lse)).sum()  # not 0 * inf on filler rows

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        logits, index, valid = ctx.saved_tensors
        scale = (grad * valid)[:, None]  # (m, 1)
        if ctx.chunk <= 0 or logits.shape[0] <= ctx.chunk or logits.dtype == torch.float32:
            # fp32 logits: the (m, V) fp32 gradient is the output itself; chunks would add a copy
            return cross_entropy_grad(logits, index, scale).to(logits.dtype), None, None
        out = torch.empty_like(logits)  # (m, V) in the logits' dtype
        for start in range(0, logits.shape[0], ctx.chunk):
            rows = slice(start, start + ctx.chunk)
            out[rows].copy_(cross_entropy_grad(logits[rows], index[rows], scale[rows]))
        return out, None, None


def cross_entropy_grad(logits: Tensor, index: Tensor, scale: Tensor) -> Tensor:
    """(softmax(logits) - onehot(index)) * scale, (rows, V) in fp32."""
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32)  # in one pass from any dtype
    probs.scatter_add_(1, index[:, None], probs.new_full((index.shape[0], 1), -1.0))  # minus the one-hot target
    return probs.mul_(scale)


def round_up_rows(picked: Tensor, predict: Tensor) -> Tensor:
    """`picked` (m,) extended with distinct unpicked rows of `predict` (total,) to a multiple of
    CPU_ROW_BUCKET (at most `total`). The filler rows carry label -100, so they add nothing to
    the loss or the gradients."""
    m, total = picked.shape[0], predict.shape[0]
    size = min(total, -(-m // CPU_ROW_BUCKET) * CPU_ROW_BUCKET)
    if size == m:
        return picked
    unpicked = (~predict).nonzero().squeeze(1)  # (total - m,)
    # Spread the filler over the batch: bunched into the first rows, it would widen the last
    # layer's packed queries (the model's labelled-query attention) for the whole batch.
    spread = torch.arange(size - m, device=picked.device) * unpicked.shape[0] // (size - m)
    return torch.cat([picked, unpicked[spread]])
