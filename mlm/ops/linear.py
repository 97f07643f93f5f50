"""Linear layers on oneDNN's GEMM: fp32 `F.linear` that is faster on AVX-512 CPUs.

Measured on the benchmark CPU (AMD EPYC, AVX-512, 2 threads): oneDNN computes every forward
shape of the benchmark model at 207-219 GFLOP/s against 176-202 for torch's default CPU GEMM
(MKL), and a training step in fp32 is ~3% faster (A/B, same weights and batches). The input
gradient goes through oneDNN from `ONEDNN_INPUT_GRAD_MIN_ROWS` rows on: faster at 4096 rows
(207-213 vs 190-201 GFLOP/s), slower at 640 (171-184 vs 193-205). Plain IEEE fp32 arithmetic
on both: the results equal F.linear's up to summation order. Under bf16 autocast torch already
runs linear layers on oneDNN, and on other CPUs the gain was not measured.

The op is `torch.ops.mkldnn._linear_pointwise`, the dense linear op that inductor's CPU backend
lowers linear layers to.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

ONEDNN_INPUT_GRAD_MIN_ROWS = 2048


def onednn_linear_op_exists() -> bool:
    """A torch build with oneDNN and its dense linear op (what `OneDNNLinear` needs to run)."""
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except (AttributeError, RuntimeError):
        return False


def onednn_linear_faster() -> bool:
    """The op exists and the CPU has AVX-512, where the speed-up was measured."""
    try:
        return onednn_linear_op_exists() and torch.backends.cpu.get_cpu_capability() == "AVX512"
    except (AttributeError, RuntimeError):
        return False


ONEDNN_LINEAR_OP = onednn_linear_op_exists()
ONEDNN_LINEAR_FASTER = onednn_linear_faster()


def onednn_linear_product(rows: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """rows (n, in) @ weight.T (+ bias) -> (n, out) on oneDNN's GEMM (every call of the op)."""
    return torch.ops.mkldnn._linear_pointwise(rows, weight, bias, "none", [], "")


class OneDNNLinear(torch.autograd.Function):
    """fp32 `F.linear` whose forward product, and for large batches its input gradient, run on
    oneDNN's GEMM instead of MKL; the weight gradient stays on MKL.

    `OneDNNLinear.apply(x, weight, bias)`; an optional fourth argument replaces
    ONEDNN_INPUT_GRAD_MIN_ROWS (tests reach both input-gradient paths with it).
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Optional[Tensor],
                input_grad_min_rows: int = ONEDNN_INPUT_GRAD_MIN_ROWS) -> Tensor:
        rows = x.reshape(-1, x.shape[-1]).contiguous()  # (n, in)
        ctx.save_for_backward(rows if ctx.needs_input_grad[1] else None, weight)
        ctx.has_bias, ctx.input_shape, ctx.input_grad_min_rows = bias is not None, x.shape, input_grad_min_rows
        return onednn_linear_product(rows, weight, bias).view(*x.shape[:-1], weight.shape[0])  # (..., out)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor], None]:
        rows, weight = ctx.saved_tensors
        grad = grad.reshape(-1, grad.shape[-1]).contiguous()  # (n, out)
        grad_x = grad_w = grad_b = None
        with torch.autocast("cpu", enabled=False):  # fp32 gradients, even if backward runs under autocast
            if ctx.needs_input_grad[0]:
                if grad.shape[0] >= ctx.input_grad_min_rows:
                    grad_x = onednn_linear_product(grad, weight.t().contiguous(), None)  # (n, in)
                else:
                    grad_x = grad @ weight
                grad_x = grad_x.view(ctx.input_shape)
            if ctx.needs_input_grad[1]:
                grad_w = grad.t() @ rows  # (out, in)
            if ctx.has_bias and ctx.needs_input_grad[2]:
                grad_b = grad.sum(0)
        return grad_x, grad_w, grad_b, None
