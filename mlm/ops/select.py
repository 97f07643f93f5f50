"""The selector: which implementation of each op runs, from one small `Kernels` value.

The model states the algorithm and calls the entries below with its `Kernels`; each entry asks
its `*_choice` function which implementation of `mlm.ops.attention`, `mlm.ops.linear` or
`mlm.ops.loss` computes the call (attention implementations behind a small selector, as in
Cramming). The choices never change what is computed, only how: every path equals the plain
PyTorch one up to summation order, and `PLAIN` runs the plain one everywhere.

"auto" is the measured policy (figures in each module's docstring). The hardware paths are
eager CPU code: compiled code fuses ops and plans its buffers itself, and CUDA has its own
kernels and a caching allocator.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from mlm.ops.attention import (CPU_MATMUL_ATTENTION_MAX_LEN, MatmulSelfAttention, matmul_attention,
                               round_up_width, sdpa_attention)
from mlm.ops.linear import ONEDNN_LINEAR_FASTER, ONEDNN_LINEAR_OP, OneDNNLinear
from mlm.ops.loss import CPU_ROW_BUCKET, SummedCrossEntropy, round_up_rows
from mlm.schema import require_literals


@dataclass(frozen=True)
class Kernels:
    """How the model computes, never what: not part of ModelConfig, never saved.

    `Kernels()` picks, call by call, what was measured fastest ("auto"); `PLAIN` is plain
    PyTorch everywhere. A forced choice runs its implementation wherever that can compute the
    call (see each field), and the plain op elsewhere.
    """

    attention: Literal["auto", "sdpa", "matmul"] = "auto"
    """auto: on CPU, matmuls when queries <= keys <= 128, and packed batches (no key mask, no
    rotary, no attention dropout; eager) of up to 128 tokens through the fused-QKV Function;
    SDPA otherwise. sdpa: `F.scaled_dot_product_attention` everywhere. matmul: matmuls at any
    length on any device, and packed eager CPU batches of any length through the Function."""
    linear: Literal["auto", "torch", "onednn"] = "auto"
    """auto: `OneDNNLinear` on AVX-512 CPUs (where it was measured faster) while
    `torch.backends.mkldnn.enabled`, for fp32 eager CPU linears outside autocast; `F.linear`
    otherwise. torch: `F.linear` everywhere. onednn: `OneDNNLinear` for every fp32 eager CPU
    linear outside autocast, on any CPU (needs a torch build with the op)."""
    cpu_buckets: bool = True
    """Eager CPU: the predicted rows padded with unlabelled filler to a multiple of 64, the loss
    in 64-row chunks, the last layer's packed query width rounded up to a multiple of 16, so
    the large tensors take a few sizes. False: exact sizes and the loss in one piece."""
    unpad: bool = True
    """Padded batches run per token on their real tokens only, re-padded around attention.
    False: every position of the (b, s) grid runs, with a key mask (the reference)."""

    def __post_init__(self) -> None:
        require_literals(self, "kernels")
        if self.linear == "onednn" and not ONEDNN_LINEAR_OP:
            raise ValueError("Kernels(linear='onednn') needs a torch build with oneDNN's "
                             "mkldnn._linear_pointwise op; use 'auto' or 'torch'")


PLAIN = Kernels(attention="sdpa", linear="torch", cpu_buckets=False)
"""Plain PyTorch everywhere: SDPA, F.linear, exact sizes, the loss in one piece."""


# ---------------------------------------------------------------- choices

def cpu_eager(t: Tensor) -> bool:
    """Where the CPU paths apply: CPU tensors outside torch.compile."""
    return t.device.type == "cpu" and not torch.compiler.is_compiling()


def linear_choice(x: Tensor, weight: Tensor, kernels: Kernels,
                  onednn_faster: bool = ONEDNN_LINEAR_FASTER) -> Literal["torch", "onednn"]:
    """`onednn_faster`: this machine is one where oneDNN was measured faster (AVX-512)."""
    if kernels.linear == "torch":
        return "torch"
    if kernels.linear == "auto" and not (onednn_faster and torch.backends.mkldnn.enabled):
        return "torch"
    if (cpu_eager(x) and x.dtype == weight.dtype == torch.float32 and x.numel() > 0 and weight.is_contiguous()
            and not torch.is_autocast_enabled("cpu")):  # bf16 autocast: torch runs F.linear on oneDNN already
        return "onednn"
    return "torch"


def attention_choice(q: Tensor, k: Tensor, kernels: Kernels) -> Literal["sdpa", "matmul"]:
    """For queries q (..., sq, D) over keys k (..., s, D)."""
    if kernels.attention != "auto":
        return kernels.attention
    return "matmul" if q.device.type == "cpu" and q.shape[-2] <= k.shape[-2] <= CPU_MATMUL_ATTENTION_MAX_LEN else "sdpa"


def self_attention_choice(qkv: Tensor, key_mask: Optional[Tensor], dropout_p: float, rotated: bool,
                          kernels: Kernels) -> Literal["fused", "split"]:
    """fused: `MatmulSelfAttention` on the QKV projection; split: q, k, v views, then `attention`.
    The Function has no key mask, rotary or dropout, and runs on eager CPU."""
    if (kernels.attention == "sdpa" or not cpu_eager(qkv) or key_mask is not None or rotated or dropout_p > 0
            or (kernels.attention == "auto" and qkv.shape[1] > CPU_MATMUL_ATTENTION_MAX_LEN)):
        return "split"
    return "fused"


def cpu_buckets_apply(t: Tensor, kernels: Kernels) -> bool:
    """Whether the sizes of tensors computed from `t` are rounded up to CPU buckets."""
    return kernels.cpu_buckets and cpu_eager(t)


# ---------------------------------------------------------------- entries the model calls

def linear(x: Tensor, weight: Tensor, bias: Optional[Tensor], kernels: Kernels) -> Tensor:
    """`F.linear(x, weight, bias)`: x (..., in) -> (..., out)."""
    if linear_choice(x, weight, kernels) == "onednn":
        return OneDNNLinear.apply(x, weight, bias)
    return F.linear(x, weight, bias)


def attention(q: Tensor, k: Tensor, v: Tensor, key_mask: Optional[Tensor], dropout_p: float,
              kernels: Kernels) -> Tensor:
    """q: (b, H, sq, D), k and v: (b, H, s, D), key_mask: (b, 1, 1, s) True where a key may be
    attended to, or None -> (b, H, sq, D)."""
    if attention_choice(q, k, kernels) == "matmul":
        return matmul_attention(q, k, v, key_mask, dropout_p)
    return sdpa_attention(q, k, v, key_mask, dropout_p)


def self_attention(qkv: Tensor, num_heads: int, key_mask: Optional[Tensor], dropout_p: float, kernels: Kernels,
                   rotate: Optional[Callable[[Tensor], Tensor]] = None) -> Tensor:
    """Self-attention from the fused projection on the grid: qkv (b, s, 3h) as [q | k | v] ->
    (b*s, h). `rotate`, the caller's position encoding (rotary), maps q and k, (b, s, H, D),
    before the scores; the fused Function has no place for it."""
    b, s, three_h = qkv.shape
    if self_attention_choice(qkv, key_mask, dropout_p, rotate is not None, kernels) == "fused":
        return MatmulSelfAttention.apply(qkv, num_heads)
    H, D = num_heads, three_h // (3 * num_heads)
    # unbind on the (b, s, 3, H, D) view: its backward stacks straight into the qkv layout
    q, k, v = qkv.view(b, s, 3, H, D).unbind(2)  # (b, s, H, D) each
    if rotate is not None:
        q, k = rotate(q), rotate(k)
    o = attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), key_mask, dropout_p, kernels)  # (b, H, s, D)
    return o.transpose(1, 2).reshape(b * s, H * D)  # (b*s, h)


def query_width(width: int, seq: int, q: Tensor, kernels: Kernels) -> int:
    """Slots for the packed queries of `q`'s rows: `width`, or on CPU a bucketed width."""
    return round_up_width(width, seq) if cpu_buckets_apply(q, kernels) else width


def pad_predicted_rows(picked: Tensor, predict: Tensor, kernels: Kernels) -> Tensor:
    """picked (m,) -> (m',), m' >= m: on CPU, distinct unlabelled filler rows up to a bucket size."""
    return round_up_rows(picked, predict) if cpu_buckets_apply(picked, kernels) else picked


def summed_cross_entropy(logits: Tensor, target: Tensor, kernels: Kernels) -> Tensor:
    """fp32 sum of the cross-entropy over rows whose target is not -100: logits (m, V), target (m,)."""
    return SummedCrossEntropy.apply(logits, target, CPU_ROW_BUCKET if cpu_buckets_apply(logits, kernels) else 0)
