"""A BERT-style encoder for masked-language-model pretraining, built for speed.

Where the time goes, and what this file does about it:

* The MLM head scores the whole vocabulary, yet only ~15% of positions carry a label.
  With labels, the head (transform + tied decoder) runs only on the labelled positions
  ("sparse prediction"); dense logits stay available for inference (no labels).
* Padding is wasted work. When `attention_mask` has zeros, the real tokens are gathered
  into a (n_tokens, hidden) matrix; embeddings, projections, feed-forward and norms run
  there, and tokens are re-padded only around the attention kernel, which gets a key mask.
  Packed pretraining batches (mask None or all ones) take a dense path with no mask.
* Attention goes through `F.scaled_dot_product_attention` (flash / memory-efficient kernels
  on GPU, the fused kernel on CPU), except short sequences on CPU, where two batched
  matmuls beat the fused kernel (measured; see `attention`); packed CPU batches run them in
  one autograd Function with fewer layout copies (`MatmulSelfAttention`).
* fp32 linear layers on AVX-512 CPUs compute their forward product (and, for large batches, the
  input gradient) with oneDNN's GEMM, which is faster there than torch's default (`OneDNNLinear`).
* Mixed precision: every op runs under `torch.autocast` (CPU bf16, CUDA bf16/fp16);
  the cross-entropy is computed in fp32 (from bf16 logits, without an fp32 copy kept).

Rows are picked with `x[index]`, not `index_select`: the latter's CPU backward
(scatter_add) is ~6x slower than indexing's (index_put) at these sizes.

Shapes in comments: b = batch, s = sequence, h = hidden, n = real (unpadded) tokens,
m = masked (labelled) tokens, V = vocabulary, H = heads, D = head size.

Saving: the decoder uses the word-embedding matrix directly (there is no second module
holding it), so the state_dict has no shared tensors and its keys do not depend on the
tying. `safetensors.torch.save_file(model.state_dict(), path)`, `save_model(model, path)`
and `load_model(model, path)` all work as they are; keys never carry wrapper prefixes as
long as the unwrapped model is saved (`torch.compile` / DDP add `_orig_mod.` / `module.`).

torch.compile (CUDA): the only data-dependent shapes are the selections of real tokens
(`nonzero` on the attention mask) and of labelled tokens (`nonzero` on labels != -100).
With `torch._dynamo.config.capture_dynamic_output_shape_ops = True` they are traced into
the graph as dynamic sizes; without it Dynamo breaks the graph at each `nonzero` and
compiles the rest with a dynamic size (`dynamic=True`). Checking whether a given mask has
padding at all (`mask.all()`) is a host sync and a graph break: pass `attention_mask=None`
for packed batches.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from mlm.model.config import ModelConfig
from mlm.schema import ConfigError

IGNORE_INDEX = -100


class MLMOutput(NamedTuple):
    """What `MLMModel.forward` returns (a NamedTuple: traced by torch.compile, walked by DDP).

    With labels: `loss` fp32 scalar, `logits` (m, V) at the labelled positions, `target` (m,).
    Without labels: `logits` (b, s, V); `loss` and `target` are None. Logits are in the
    compute dtype: fp32, or bf16 / fp16 under autocast.
    Special-token logits are -inf everywhere, so their probability is exactly 0.
    """
    loss: Optional[Tensor]
    logits: Tensor
    target: Optional[Tensor]


class TokenLayout:
    """Where the real tokens of a batch are, so per-token layers can skip padding.

    `index` (n,) holds the flat positions (row * s + col) of real tokens, or is None when
    tokens stay in their (b, s) grid. `key_mask` (b, 1, 1, s) is True for keys that may be
    attended to, or None when nothing is padded.
    """

    def __init__(self, batch: int, seq: int, index: Optional[Tensor] = None,
                 key_mask: Optional[Tensor] = None):
        self.batch, self.seq, self.index, self.key_mask = batch, seq, index, key_mask

    def gather(self, x: Tensor) -> Tensor:
        """(b, s, ...) -> (n, ...) real tokens only; identity when not unpadded."""
        if self.index is None:
            return x
        return x.reshape(self.batch * self.seq, *x.shape[2:])[self.index]

    def grid_rows(self, rows: Tensor) -> Tensor:
        """Token rows (of the (b*s) or (n) token matrix) -> their rows in the (b*s) grid."""
        return rows if self.index is None else self.index[rows]

    def scatter(self, x: Tensor) -> Tensor:
        """(n, d) -> (b, s, d), zeros at padding; identity when not unpadded."""
        if self.index is None:
            return x
        out = x.new_zeros(self.batch * self.seq, x.shape[-1])
        out = out.index_copy(0, self.index, x)
        return out.view(self.batch, self.seq, x.shape[-1])


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoFormer), "rotate half" layout, angles precomputed.

    The cos/sin tables are non-persistent buffers: derived from the config, never saved.
    """

    def __init__(self, head_size: int, max_seq_len: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / theta ** (torch.arange(0, head_size, 2, dtype=torch.float64) / head_size)
        angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float64), inv_freq)  # (max_s, D/2)
        angles = torch.cat([angles, angles], dim=-1)  # (max_s, D)
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def forward(self, x: Tensor, positions: Optional[Tensor] = None) -> Tensor:
        # x: (b, s, H, D) with positions None (0..s-1), or (m, H, D) with positions (m,)
        if positions is None:
            cos, sin = self.cos[: x.shape[-3]], self.sin[: x.shape[-3]]  # (s, D)
        else:
            cos, sin = self.cos[positions], self.sin[positions]  # (m, D)
        cos, sin = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)  # broadcast over heads
        x1, x2 = x.chunk(2, dim=-1)
        rotated = torch.cat([-x2, x1], dim=-1)
        return x * cos + rotated * sin


def _cpu_eager(t: Tensor) -> bool:
    """Where the CPU-only paths below apply: CPU tensors outside torch.compile (compiled code
    fuses ops and plans its buffers itself)."""
    return t.device.type == "cpu" and not torch.compiler.is_compiling()


def _onednn_linear_available() -> bool:
    """An AVX-512 x86 CPU (where the speed-up was measured) and a torch build with oneDNN and its
    dense linear op, `mkldnn._linear_pointwise` (the op inductor's CPU backend lowers linear
    layers to)."""
    try:
        return (torch.backends.mkldnn.is_available() and torch.backends.cpu.get_cpu_capability() == "AVX512"
                and hasattr(torch.ops.mkldnn, "_linear_pointwise"))
    except (AttributeError, RuntimeError):
        return False


ONEDNN_FP32_LINEAR = _onednn_linear_available()
# The input gradient goes through oneDNN from this many rows on: faster at 4096 rows
# (207-213 vs 190-201 GFLOP/s), slower at 640 (171-184 vs 193-205), measured on the benchmark CPU.
ONEDNN_INPUT_GRAD_MIN_ROWS = 2048


def _onednn_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class OneDNNLinear(torch.autograd.Function):
    """fp32 `F.linear` whose forward product, and for large batches its input gradient, run on
    oneDNN's GEMM instead of torch's default CPU GEMM (MKL); the weight gradient stays on MKL.

    Why: on the benchmark CPU (AMD EPYC, AVX-512, 2 threads) oneDNN computes every forward shape
    of the benchmark model at 207-219 GFLOP/s against 176-202 for MKL, and a training step in
    fp32 is ~3% faster (A/B, same weights and batches). Plain IEEE fp32 arithmetic on both: the
    results equal F.linear's up to summation order. Under bf16 autocast torch already uses oneDNN.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        rows = x.reshape(-1, x.shape[-1]).contiguous()  # (n, in)
        ctx.save_for_backward(rows if ctx.needs_input_grad[1] else None, weight)
        ctx.has_bias, ctx.input_shape = bias is not None, x.shape
        return _onednn_linear(rows, weight, bias).view(*x.shape[:-1], weight.shape[0])  # (..., out)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
        rows, weight = ctx.saved_tensors
        grad = grad.reshape(-1, grad.shape[-1]).contiguous()  # (n, out)
        grad_x = grad_w = grad_b = None
        with torch.autocast("cpu", enabled=False):  # fp32 gradients, even if backward runs under autocast
            if ctx.needs_input_grad[0]:
                if grad.shape[0] >= ONEDNN_INPUT_GRAD_MIN_ROWS:
                    grad_x = _onednn_linear(grad, weight.t().contiguous(), None)  # (n, in)
                else:
                    grad_x = grad @ weight
                grad_x = grad_x.view(ctx.input_shape)
            if ctx.needs_input_grad[1]:
                grad_w = grad.t() @ rows  # (out, in)
            if ctx.has_bias and ctx.needs_input_grad[2]:
                grad_b = grad.sum(0)
        return grad_x, grad_w, grad_b


def linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """`F.linear`, through `OneDNNLinear` for fp32 on AVX-512 CPUs in eager mode (off with
    `torch.backends.mkldnn.flags(enabled=False)`)."""
    if (ONEDNN_FP32_LINEAR and torch.backends.mkldnn.enabled and _cpu_eager(x)
            and x.dtype == weight.dtype == torch.float32 and x.numel() > 0 and weight.is_contiguous()
            and not torch.is_autocast_enabled("cpu")):
        return OneDNNLinear.apply(x, weight, bias)
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """`nn.Linear` (same parameters, state_dict and init) computed by `linear`."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)


# On CPU, self-attention over sequences up to this length runs as two batched matmuls
# instead of the fused kernel: at (32 x 4 heads, 128, 64), forward + backward, 10 ms in bf16
# and 20 ms in fp32 against 29 / 24 ms for the fused kernel (torch 2.13, 2 AVX-512 BF16
# cores). At 256 the two are even, at 512 the kernel wins by 2x and its memory stays linear.
CPU_MATMUL_ATTENTION_MAX_LEN = 128
# The last layer's packed labelled queries (SelfAttention._forward_queries) are padded on CPU
# to a multiple of this width, so their score tensors take a few sizes, not a new one each
# step: tensors of a new size every step fragment glibc's heap (measured: peak RSS +120 MB).
CPU_QUERY_BUCKET = 16


def attention(q: Tensor, k: Tensor, v: Tensor, key_mask: Optional[Tensor], dropout_p: float) -> Tensor:
    """q: (b, H, sq, D), k and v: (b, H, s, D), key_mask: (b, 1, 1, s) True where a key may be
    attended to, or None -> (b, H, sq, D).

    `F.scaled_dot_product_attention` (flash / memory-efficient kernels on GPU, the fused
    kernel on CPU), except short sequences on CPU (s <= CPU_MATMUL_ATTENTION_MAX_LEN):
    scores, softmax and the weighted sum as plain matmuls, 1.2-3x faster in bf16 (measured).
    """
    if q.device.type == "cpu" and q.shape[-2] <= k.shape[-2] <= CPU_MATMUL_ATTENTION_MAX_LEN:
        scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)  # (b, H, sq, s)
        if key_mask is not None:
            scores = scores.masked_fill(~key_mask, float("-inf"))
        probs = torch.softmax(scores, dim=-1)  # the kernel accumulates in fp32 whatever the dtype
        if dropout_p > 0:
            probs = F.dropout(probs, dropout_p)
        return probs @ v  # (b, H, sq, D)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, dropout_p=dropout_p)


class MatmulSelfAttention(torch.autograd.Function):
    """Unmasked CPU self-attention from the fused QKV projection output: qkv (b, s, 3h) ->
    (b*s, h) attention outputs, for short sequences on CPU (see `attention`).

    Why a custom Function: run op by op, the same math costs three q/k/v layout copies, a
    pass to scale q and one more in backward, and a stack of the three gradients into the
    QKV layout. Here one permute copy brings q, k and v into (b*H, s, D) and one takes their
    gradients back; the 1/sqrt(D) scale rides on the matmuls (`alpha`). Measured on the
    benchmark model (2 cores): a training step 1-1.5% faster, in fp32 and in bf16 alike.
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


class SelfAttention(nn.Module):
    """Bidirectional multi-head attention: fused QKV projection, SDPA kernel, output projection.

    With `queries` (rows of x), only those rows get a query, an output and an output
    projection; keys and values still come from every token. The last layer uses this
    when only the labelled tokens' final states are needed.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.head_size = cfg.hidden_size // cfg.num_heads
        self.qkv = Linear(cfg.hidden_size, 3 * cfg.hidden_size, bias=cfg.bias)
        self.out = Linear(cfg.hidden_size, cfg.hidden_size, bias=cfg.bias)
        self.rotary = (RotaryEmbedding(self.head_size, cfg.max_seq_len, cfg.rope_theta)
                       if cfg.position == "rotary" else None)
        self.attention_dropout = cfg.attention_dropout

    def forward(self, x: Tensor, layout: TokenLayout, queries: Optional[Tensor] = None) -> Tensor:
        # x: (b, s, h), (b*s, h) or (n, h) token rows; queries: (m,) rows of x, or None for all
        if queries is not None:
            return self._forward_queries(x, layout, queries)
        b, s, H, D = layout.batch, layout.seq, self.num_heads, self.head_size
        qkv = layout.scatter(self.qkv(x))  # (b, s, 3h) or (b*s, 3h): on the grid for attention
        if self._matmul_function_applies(qkv, layout):
            return self.out(MatmulSelfAttention.apply(qkv.view(b, s, 3 * H * D), H).view(x.shape))
        # unbind on the (b, s, 3, H, D) view: its backward stacks straight into the qkv layout
        q, k, v = qkv.view(b, s, 3, H, D).unbind(2)  # (b, s, H, D) each
        if self.rotary is not None:
            q, k = self.rotary(q), self.rotary(k)
        o = self._attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), layout)  # (b, H, s, D)
        o = o.transpose(1, 2).reshape(b * s, H * D)  # (b*s, h) grid rows
        o = o[layout.index] if layout.index is not None else o.view(x.shape)  # like x
        return self.out(o)

    def _matmul_function_applies(self, qkv: Tensor, layout: TokenLayout) -> bool:
        """Packed CPU batches in eager mode: no key mask, no rotary, no attention dropout,
        short sequences. Everything else goes through `attention`."""
        return (_cpu_eager(qkv) and layout.key_mask is None and layout.index is None
                and self.rotary is None and not (self.training and self.attention_dropout > 0)
                and layout.seq <= CPU_MATMUL_ATTENTION_MAX_LEN)

    def _forward_queries(self, x: Tensor, layout: TokenLayout, queries: Tensor) -> Tensor:
        """Attention output of the `queries` rows only, (m, h). Keys and values come from every
        token; each grid row's queries are packed into `width` slots (the most queries any
        row has, ~20% of s at 15% masking), so scores are computed only for them."""
        b, s, H, D = layout.batch, layout.seq, self.num_heads, self.head_size
        h = H * D
        w, bias = self.qkv.weight, self.qkv.bias  # rows: [q; k; v]
        kv = layout.scatter(linear(x, w[h:], None if bias is None else bias[h:]))  # (b, s, 2h)
        k, v = kv.view(b, s, 2, H, D).unbind(2)  # (b, s, H, D) each
        q = linear(x[queries], w[:h], None if bias is None else bias[:h]).view(-1, H, D)  # (m, H, D)
        grid = layout.grid_rows(queries)  # (m,) positions in the (b*s) grid, all distinct
        row, col = grid // s, grid % s
        if self.rotary is not None:
            q, k = self.rotary(q, col), self.rotary(k)
        chosen = torch.zeros(b * s, dtype=torch.int32, device=grid.device).index_fill_(0, grid, 1).view(b, s)
        slot = (chosen.cumsum(1) - 1).view(-1)[grid]  # (m,) rank of each query within its row
        # Under torch.compile the width stays s (no data-dependent size); eagerly it is read.
        width = s if torch.compiler.is_compiling() else max(1, int(chosen.sum(1).max()))
        if q.device.type == "cpu":  # a few widths, not a new size every step (see `attention`)
            width = min(s, -(-width // CPU_QUERY_BUCKET) * CPU_QUERY_BUCKET)
        packed = q.new_zeros(b, width, H, D)
        packed[row, slot] = q  # (b, width, H, D)
        o = self._attend(packed.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), layout)  # (b, H, width, D)
        return self.out(o.transpose(1, 2)[row, slot].reshape(-1, h))  # (m, h)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, layout: TokenLayout) -> Tensor:
        return attention(q, k, v, layout.key_mask, self.attention_dropout if self.training else 0.0)


class FeedForward(nn.Module):
    """GELU MLP (h -> f -> h), or GeGLU: GELU(x W) * (x V) -> h, with f = intermediate_size."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gated = cfg.activation == "geglu"
        width = 2 * cfg.intermediate_size if self.gated else cfg.intermediate_size
        self.up = Linear(cfg.hidden_size, width, bias=cfg.bias)
        self.down = Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.bias)

    def forward(self, x: Tensor) -> Tensor:  # x: (..., h)
        u = self.up(x)  # (..., f) or (..., 2f)
        if self.gated:
            a, g = u.chunk(2, dim=-1)
            u = F.gelu(a) * g
        else:
            u = F.gelu(u)
        return self.down(u)  # (..., h)


class Block(nn.Module):
    """One transformer layer. Pre-LN (default): x + f(norm(x)), stable without warmup tricks
    and needing a final norm; post-LN (original BERT): norm(x + f(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.pre_norm = cfg.norm == "pre"
        self.attn_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.attn = SelfAttention(cfg)
        self.ffn_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.ffn = FeedForward(cfg)
        self.dropout = cfg.dropout

    def _drop(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.dropout, training=True) if self.training and self.dropout > 0 else x

    def forward(self, x: Tensor, layout: TokenLayout, keep: Optional[Tensor] = None) -> Tensor:
        # x: (b, s, h) or (n, h); keep: (m,) token rows whose output is wanted, None for all
        if keep is not None:
            x = x.reshape(-1, x.shape[-1])  # (b*s, h) or (n, h)
        if self.pre_norm:
            a = self.attn(self.attn_norm(x), layout, keep)  # like x, or (m, h)
            x = (x if keep is None else x[keep]) + self._drop(a)
            return x + self._drop(self.ffn(self.ffn_norm(x)))
        a = self.attn(x, layout, keep)
        x = self.attn_norm((x if keep is None else x[keep]) + self._drop(a))
        return self.ffn_norm(x + self._drop(self.ffn(x)))


class Embeddings(nn.Module):
    """Word (+ learned absolute position) embeddings, then LayerNorm and dropout."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.word = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position = nn.Embedding(cfg.max_seq_len, cfg.hidden_size) if cfg.position == "learned" else None
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.dropout = cfg.dropout

    def forward(self, input_ids: Tensor, layout: TokenLayout) -> Tensor:
        if layout.index is None:
            x = self.word(input_ids)  # (b, s, h)
            if self.position is not None:
                x = x + self.position.weight[: layout.seq]  # (s, h) broadcast over the batch
        else:
            x = self.word(layout.gather(input_ids))  # (n, h)
            if self.position is not None:
                x = x + self.position(layout.index % layout.seq)  # column of each real token
        x = self.norm(x)
        return F.dropout(x, self.dropout, training=True) if self.training and self.dropout > 0 else x


class MLMHead(nn.Module):
    """Transform (dense, GELU, LayerNorm) then the decoder tied to the word embeddings.

    The decoder weight is passed in, not stored, so the tied matrix exists once in the
    state_dict. Special tokens get -inf through the decoder bias (a (V,) op folded into
    the matmul, instead of a pass over the (tokens, V) logits); their softmax probability
    and every gradient through them are exactly 0. Logits come back in the compute dtype
    (bf16 under autocast); the loss upcasts them to fp32.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dense = Linear(cfg.hidden_size, cfg.hidden_size, bias=cfg.bias)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size)) if cfg.bias else None
        special = torch.zeros(cfg.vocab_size, dtype=torch.bool)
        special[list(cfg.special_token_ids)] = True
        self.register_buffer("special", special, persistent=False)  # (V,)

    def decoder_bias(self) -> Tensor:  # (V,): the learned bias with -inf at special ids
        bias = self.bias if self.bias is not None else torch.zeros_like(self.special, dtype=torch.float32)
        return bias.masked_fill(self.special, float("-inf"))

    def forward(self, x: Tensor, decoder_weight: Tensor) -> Tensor:  # x: (..., h)
        x = self.norm(F.gelu(self.dense(x)))
        return linear(x, decoder_weight, self.decoder_bias())  # (..., V), bf16 under autocast

    def mask_special(self, logits: Tensor) -> Tensor:
        return logits.masked_fill(self.special, float("-inf"))


class SummedCrossEntropy(torch.autograd.Function):
    """sum(cross_entropy(logits.float(), target)) over rows whose target is not -100.

    Same value and gradient as `F.cross_entropy(logits.float(), target, ignore_index=-100,
    reduction="sum")`, computed in fp32, with less memory at the step's peak: it saves only
    the logits, in their own dtype (bf16 under autocast), not an fp32 log-softmax.
    `chunk` > 0 processes that many rows at a time, so the fp32 (rows, V) work buffers are
    (chunk, V) and of one size every step (the CPU path: see `_round_up_rows`); 0 does all
    rows at once (CUDA, torch.compile).
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
            return _cross_entropy_grad(logits, index, scale).to(logits.dtype), None, None
        out = torch.empty_like(logits)  # (m, V) in the logits' dtype
        for start in range(0, logits.shape[0], ctx.chunk):
            rows = slice(start, start + ctx.chunk)
            out[rows].copy_(_cross_entropy_grad(logits[rows], index[rows], scale[rows]))
        return out, None, None


def _cross_entropy_grad(logits: Tensor, index: Tensor, scale: Tensor) -> Tensor:
    """(softmax(logits) - onehot(index)) * scale, (rows, V) in fp32."""
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32)  # in one pass from any dtype
    probs.scatter_add_(1, index[:, None], probs.new_full((index.shape[0], 1), -1.0))  # minus the one-hot target
    return probs.mul_(scale)


CPU_ROW_BUCKET = 64


def _round_up_rows(picked: Tensor, predict: Tensor) -> Tensor:
    """`picked` (m,) extended with distinct unpicked rows to a multiple of CPU_ROW_BUCKET.

    Why: on CPU every step allocating (m, V) tensors of a new size m makes glibc's heap
    fragment; resident memory then grows step after step (measured: +900 MB over 60
    steps of the benchmark model). A handful of sizes are reused instead. The filler rows
    carry label -100, so they add nothing to the loss or the gradients. Eager CPU only:
    CUDA's caching allocator copes with varying sizes, and compiled code plans its buffers.
    """
    m, total = picked.shape[0], predict.shape[0]
    size = min(total, -(-m // CPU_ROW_BUCKET) * CPU_ROW_BUCKET)
    if size == m:
        return picked
    unpicked = (~predict).nonzero().squeeze(1)  # (total - m,)
    # Spread the filler over the batch: bunched into the first rows, it would widen the last
    # layer's packed queries (SelfAttention._forward_queries) for the whole batch.
    spread = torch.arange(size - m, device=picked.device) * unpicked.shape[0] // (size - m)
    return torch.cat([picked, unpicked[spread]])


class MLMModel(nn.Module):
    """BERT-style masked language model: embeddings, `layers`, final norm, sparse MLM head.

    forward(input_ids (b, s), attention_mask (b, s) or None, labels (b, s) or None,
    reduction "mean" | "sum") -> MLMOutput. Labels of -100 are not predicted; labels on
    padding positions (attention_mask 0) are ignored. With no labelled token, "mean" is 0.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        if cfg.vocab_size <= 0:
            raise ConfigError(f"model.vocab_size must be positive, got {cfg.vocab_size} "
                              "(set it, or let the trainer take it from the tokenizer)")
        bad = [i for i in cfg.special_token_ids if not 0 <= i < cfg.vocab_size]
        if bad:
            raise ConfigError(f"model.special_token_ids {bad} are outside the vocabulary (size {cfg.vocab_size})")
        self.cfg = cfg
        self.embeddings = Embeddings(cfg)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        # Pre-LN leaves the residual stream unnormalized; post-LN blocks end in a norm already.
        self.final_norm = (nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, bias=cfg.bias)
                           if cfg.norm == "pre" else nn.Identity())
        self.head = MLMHead(cfg)
        self.unpad = True  # False: padded batches run on the (b, s) grid with a key mask (for tests)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Normal(0, init_std) weights, zero biases, unit norms (BERT's init). With
        `scaled_residual_init`, the projections that write into the residual stream
        (attention out, FFN down) get std / sqrt(2 * layers), so the stream's variance does
        not grow with depth (GPT-2 / Megatron): for deep models; at 4 layers it slowed
        early training (measured, BENCHMARKS.md)."""
        std = self.cfg.init_std
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, 0.0, std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        if self.cfg.scaled_residual_init:
            residual_std = std / math.sqrt(2 * self.cfg.num_layers)
            for block in self.layers:
                nn.init.normal_(block.attn.out.weight, 0.0, residual_std)
                nn.init.normal_(block.ffn.down.weight, 0.0, residual_std)
        if self.head.bias is not None:
            nn.init.zeros_(self.head.bias)

    # ------------------------------------------------------------ forward

    def _check(self, input_ids: Tensor, attention_mask: Optional[Tensor], labels: Optional[Tensor]) -> None:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, seq), got shape {tuple(input_ids.shape)}")
        if input_ids.shape[1] > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {input_ids.shape[1]} exceeds model.max_seq_len "
                             f"({self.cfg.max_seq_len}); shorten the blocks (data.seq_len) or raise max_seq_len")
        if input_ids.shape[1] == 0:
            raise ValueError("input_ids has sequence length 0")
        for name, t in (("attention_mask", attention_mask), ("labels", labels)):
            if t is not None and t.shape != input_ids.shape:
                raise ValueError(f"{name} shape {tuple(t.shape)} does not match input_ids shape "
                                 f"{tuple(input_ids.shape)}")

    def _layout(self, input_ids: Tensor, attention_mask: Optional[Tensor]) -> TokenLayout:
        b, s = input_ids.shape
        if attention_mask is None:
            return TokenLayout(b, s)
        real = attention_mask != 0  # (b, s)
        if bool(real.all()):  # packed / unpadded batch: dense fast path, no mask
            return TokenLayout(b, s)
        # A row with no real token would leave its queries nothing to attend to (NaN); let it
        # see every key instead: its outputs are padding and are dropped or ignored anyway.
        key_mask = (real | ~real.any(dim=1, keepdim=True))[:, None, None, :]  # (b, 1, 1, s)
        index = real.reshape(-1).nonzero().squeeze(1) if self.unpad else None  # (n,)
        return TokenLayout(b, s, index, key_mask)

    def _encode(self, input_ids: Tensor, layout: TokenLayout, keep: Optional[Tensor] = None) -> Tensor:
        """Final states of all tokens, (b, s, h) or (n, h); with `keep` (m,) token rows, of those
        rows only (m, h): the last layer then computes queries, attention outputs and its
        feed-forward only for them (~70% of that layer's work saved at 15% masking)."""
        x = self.embeddings(input_ids, layout)  # (b, s, h) or (n, h)
        last = len(self.layers) - 1
        for i, block in enumerate(self.layers):
            x = block(x, layout, keep if i == last else None)
        return self.final_norm(x)

    def encode(self, input_ids: Tensor, attention_mask: Optional[Tensor] = None) -> Tensor:
        """Final hidden states (b, s, h) after the final norm; zeros at padding positions
        when the batch was unpadded."""
        self._check(input_ids, attention_mask, None)
        layout = self._layout(input_ids, attention_mask)
        return layout.scatter(self._encode(input_ids, layout))

    def forward(self, input_ids: Tensor, attention_mask: Optional[Tensor] = None,
                labels: Optional[Tensor] = None, reduction: str = "mean") -> MLMOutput:
        self._check(input_ids, attention_mask, labels)
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        layout = self._layout(input_ids, attention_mask)
        decoder_weight = self.embeddings.word.weight  # (V, h), tied
        if labels is None:
            # Dense logits for inference; padding positions get logits 0 (special ids -inf).
            x = self._encode(input_ids, layout)  # (b, s, h) or (n, h)
            if layout.index is None:
                return MLMOutput(None, self.head(x, decoder_weight), None)  # (b, s, V)
            logits = layout.scatter(self.head(x, decoder_weight))  # (b, s, V)
            return MLMOutput(None, self.head.mask_special(logits), None)
        # Sparse prediction: the last layer's outputs and the head only for labelled tokens.
        flat_labels = layout.gather(labels).reshape(-1)  # (b*s,) or (n,)
        predict = flat_labels != IGNORE_INDEX
        picked = predict.nonzero().squeeze(1)  # (m,) token rows
        m = picked.shape[0]
        cpu_eager = _cpu_eager(picked)
        if cpu_eager:
            picked = _round_up_rows(picked, predict)  # (m',) m' >= m; the filler rows are unlabelled
        target = flat_labels[picked]  # (m',)
        hidden = self._encode(input_ids, layout, keep=picked)  # (m', h)
        logits = self.head(hidden, decoder_weight)  # (m', V)
        loss = SummedCrossEntropy.apply(logits, target, CPU_ROW_BUCKET if cpu_eager else 0)  # fp32; filler rows add 0
        if reduction == "mean":
            loss = loss / predict.sum().clamp(min=1)
        return MLMOutput(loss, logits[:m], target[:m])

    # ------------------------------------------------------------ accounting

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Unique parameters (the tied decoder is the word embedding, counted once)."""
        total = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            total -= self.embeddings.word.weight.numel()
            if self.embeddings.position is not None:
                total -= self.embeddings.position.weight.numel()
        return total

    def flops_per_token(self, seq_len: int, masked_fraction: float = 0.15) -> float:
        """Training FLOPs per input token (forward + backward = 3 x forward), for MFU.

        6 x (matmul weights every token passes through: QKV, attention out, FFN) plus the
        attention scores and weighted sum, 12 * layers * hidden * seq_len, plus the head
        (transform + decoder, 6 * (h^2 + h*V)) for the `masked_fraction` of tokens it really
        runs on (sparse prediction; pass 1.0 to count a dense head). Embedding lookups,
        norms and activations are not counted (the usual 6N convention).
        """
        h, V, L = self.cfg.hidden_size, self.cfg.vocab_size, self.cfg.num_layers
        per_token_matmul = sum(m.weight.numel() for m in self.layers.modules() if isinstance(m, nn.Linear))
        head_matmul = h * h + h * V
        attention = 12 * L * h * seq_len
        return float(6 * per_token_matmul + attention + 6 * masked_fraction * head_matmul)
