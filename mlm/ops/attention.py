"""Attention implementations, and what each gains where.

Measured on the benchmark CPU (AMD EPYC, AVX-512 with BF16, 2 threads, torch 2.13):

* `sdpa_attention`: `F.scaled_dot_product_attention`, flash / memory-efficient kernels on GPU,
  the fused kernel on CPU. Its memory stays linear in the sequence length. The plain path.
* `matmul_attention`: scores, softmax and the weighted sum as two batched matmuls. At
  (32 x 4 heads, 128, 64), forward + backward, 10 ms in bf16 and 20 ms in fp32 against 29 / 24 ms
  for the fused kernel (1.2-3x faster). At 256 keys the two are even, at 512 the kernel wins by
  2x: hence matmuls only up to `CPU_MATMUL_ATTENTION_MAX_LEN` keys on CPU.
* `MatmulSelfAttention`: the matmul math for packed (unmasked, unrotated) CPU batches, straight
  from the fused QKV projection, with fewer layout copies: a training step of the benchmark
  model 1-1.5% faster, in fp32 and in bf16 alike.
* `round_up_width`: the last layer's packed labelled queries get a width that is a multiple of
  `CPU_QUERY_BUCKET`, so their score tensors take a few sizes, not a new one each step: tensors
  of a new size every step fragment glibc's heap (measured: peak RSS +120 MB).

Shapes: b = batch, s = sequence (keys), sq = queries, H = heads, D = head size, h = H * D.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

CPU_MATMUL_ATTENTION_MAX_LEN = 128
CPU_QUERY_BUCKET = 16


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor, key_mask: Optional[Tensor], dropout_p: float) -> Tensor:
    """q: (b, H, sq, D), k and v: (b, H, s, D), key_mask: (b, 1, 1, s) True where a key may be
    attended to (or any mask SDPA broadcasts), or None -> (b, H, sq, D)."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, dropout_p=dropout_p)


def matmul_attention(q: Tensor, k: Tensor, v: Tensor, key_mask: Optional[Tensor], dropout_p: float) -> Tensor:
    """`sdpa_attention`'s result as plain ops: faster than the fused kernel for short CPU sequences."""
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)  # (b, H, sq, s)
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1)  # the kernel accumulates in fp32 whatever the dtype
    if dropout_p > 0:
        probs = F.dropout(probs, dropout_p)
    return probs @ v  # (b, H, sq, D)


def round_up_width(width: int, seq: int) -> int:
    """`width` packed query slots rounded up to a multiple of CPU_QUERY_BUCKET, at most `seq`."""
    return min(seq, -(-width // CPU_QUERY_BUCKET) * CPU_QUERY_BUCKET)


class MatmulSelfAttention(torch.autograd.Function):
    """Unmasked CPU self-attention from the fused QKV projection output: qkv (b, s, 3h) ->
    (b*s, h) attention outputs; `MatmulSelfAttention.apply(qkv, num_heads)`.

    Why a custom Function: run op by op, the same math costs three q/k/v layout copies, a
    pass to scale q and one more in backward, and a stack of the three gradients into the
    QKV layout. Here one permute copy brings q, k and v into (b*H, s, D) and one takes their
    gradients back; the 1/sqrt(D) scale rides on the matmuls (`alpha`).
    Runs in the dtype of `qkv` (bf16 under CPU autocast); softmax accumulates in fp32.
    """

    @staticmethod
    def forward(ctx, qkv: Tensor, num_heads: int) -> Tensor:
        b, s, three_h = qkv.shape
        h = three_h // 3
        D = h // num_heads
        with torch.autocast("cpu", enabled=False):
            qkv = qkv.view(b, s, 3, num_heads, D).permute(2, 0, 3, 1, 4).reshape(3, b * num_heads, s, D)
            q, k, v = qkv.unbind(0)  # (b*H, s, D) each
            unused = q.new_empty(1, 1, 1).expand(b * num_heads, s, s)  # baddbmm's input, ignored at beta=0
            scores = torch.baddbmm(unused, q, k.transpose(1, 2), beta=0, alpha=D ** -0.5)  # (b*H, s, s)
            probs = torch.softmax(scores, dim=-1)
            o = torch.bmm(probs, v)  # (b*H, s, D)
        ctx.save_for_backward(qkv, probs)
        ctx.shape = (b, s, num_heads, D)
        return o.view(b, num_heads, s, D).transpose(1, 2).reshape(b * s, h)  # (b*s, h)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # grad: (b*s, h)
        qkv, probs = ctx.saved_tensors
        q, k, v = qkv.unbind(0)
        b, s, H, D = ctx.shape
        with torch.autocast("cpu", enabled=False):
            grad = grad.view(b, s, H, D).transpose(1, 2).reshape(b * H, s, D).to(qkv.dtype)  # (b*H, s, D)
            out = torch.empty_like(qkv)  # (3, b*H, s, D): gradients of q, k, v
            torch.bmm(probs.transpose(1, 2), grad, out=out[2])  # dv
            # softmax backward, probs * (g - sum(g * probs, -1)), in one fused kernel
            grad_scores = torch._softmax_backward_data(grad @ v.transpose(1, 2), probs, -1, probs.dtype)
            torch.baddbmm(out[0], grad_scores, k, beta=0, alpha=D ** -0.5, out=out[0])  # dq
            torch.baddbmm(out[1], grad_scores.transpose(1, 2), q, beta=0, alpha=D ** -0.5, out=out[1])  # dk
        return out.view(3, b, H, s, D).permute(1, 3, 0, 2, 4).reshape(b, s, 3 * H * D), None
