"""A BERT-style encoder for masked-language-model pretraining, and its MLM head.

The algorithm lives here; `mlm.ops` computes each op as the model's `Kernels` pick (SDPA or
matmuls, oneDNN or torch GEMMs, CPU buckets), which never changes the result. Work is saved by
* sparse prediction: with labels, the last layer's queries and feed-forward and the head run only
  on the ~15% labelled positions (dense logits without labels);
* unpadding: padded batches run per token on their real tokens, (n, h), and on the re-padded
  grid with a key mask only in attention; packed batches (mask None or all ones) use no mask.
Under autocast the loss is computed in fp32. Rows are picked with `x[index]`: `index_select`'s
CPU backward is ~6x slower. The decoder is the word-embedding matrix itself, so the state_dict
has no shared tensors. Under torch.compile the only data-dependent sizes are the `nonzero`
selections of real and labelled tokens; pass `attention_mask=None` for packed batches
(`mask.all()` is a host sync).

Shapes: b = batch, s = sequence, h = hidden, n = real (unpadded) tokens, m = masked (labelled)
tokens, V = vocabulary, H = heads, D = head size.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlm.model.config import ModelConfig
from mlm.ops import select as ops  # the entries: each op computed as `kernels` picks
from mlm.ops.loss import IGNORE_INDEX
from mlm.schema import ConfigError


class MLMOutput(NamedTuple):
    """What `MLMModel.forward` returns (a NamedTuple: traced by torch.compile, walked by DDP). With
    labels: `loss` fp32 scalar, `logits` (m, V) at the labelled positions, `target` (m,); without:
    `logits` (b, s, V). Logits are in the compute dtype; special-token logits are -inf."""
    loss: Optional[Tensor]
    logits: Tensor
    target: Optional[Tensor]


class TokenLayout:
    """Where the real tokens of a batch are, so per-token layers can skip padding.
    `index` (n,): the flat positions (row * s + col) of real tokens, or None when tokens stay in
    their (b, s) grid. `key_mask` (b, 1, 1, s): True for keys that may be attended to, or None
    when nothing is padded (then `index` is None too)."""

    def __init__(self, batch: int, seq: int, index: Optional[Tensor] = None, key_mask: Optional[Tensor] = None):
        self.batch, self.seq, self.index, self.key_mask = batch, seq, index, key_mask

    def gather(self, x: Tensor) -> Tensor:
        """(b, s, ...) -> (n, ...) real tokens only; identity when not unpadded."""
        return x if self.index is None else x.reshape(self.batch * self.seq, *x.shape[2:])[self.index]

    def grid_rows(self, rows: Tensor) -> Tensor:
        """Token rows (of the (b*s) or (n) token matrix) -> their rows in the (b*s) grid."""
        return rows if self.index is None else self.index[rows]

    def scatter(self, x: Tensor) -> Tensor:
        """(n, d) -> (b, s, d), zeros at padding; identity when not unpadded."""
        if self.index is None:
            return x
        out = x.new_zeros(self.batch * self.seq, x.shape[-1]).index_copy(0, self.index, x)  # (b*s, d)
        return out.view(self.batch, self.seq, x.shape[-1])


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoFormer), "rotate half" layout, angles precomputed.
    The cos/sin tables are non-persistent buffers: derived from the config, never saved."""

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
        return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class Linear(nn.Linear):
    """`nn.Linear` (same parameters, state_dict and init) computed by `ops.linear`."""

    def __init__(self, in_features: int, out_features: int, bias: bool, kernels: ops.Kernels):
        super().__init__(in_features, out_features, bias=bias)
        self.kernels = kernels

    def forward(self, x: Tensor) -> Tensor:
        return ops.linear(x, self.weight, self.bias, self.kernels)


class SelfAttention(nn.Module):
    """Bidirectional multi-head attention: fused QKV projection, attention, output projection.
    With `queries` (rows of x; the last layer's labelled tokens), only those rows get a query,
    an output and an output projection; keys and values still come from every token."""

    def __init__(self, cfg: ModelConfig, kernels: ops.Kernels):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.head_size = cfg.hidden_size // cfg.num_heads
        self.qkv = Linear(cfg.hidden_size, 3 * cfg.hidden_size, cfg.bias, kernels)
        self.out = Linear(cfg.hidden_size, cfg.hidden_size, cfg.bias, kernels)
        self.rotary = (RotaryEmbedding(self.head_size, cfg.max_seq_len, cfg.rope_theta)
                       if cfg.position == "rotary" else None)
        self.attention_dropout = cfg.attention_dropout
        self.kernels = kernels

    def forward(self, x: Tensor, layout: TokenLayout, queries: Optional[Tensor] = None) -> Tensor:
        # x: (b, s, h), (b*s, h) or (n, h) token rows; queries: (m,) rows of x, or None for all
        if queries is not None:
            return self._forward_queries(x, layout, queries)
        qkv = layout.scatter(self.qkv(x))  # (b, s, 3h): on the grid for attention
        o = ops.self_attention(qkv, self.num_heads, layout.key_mask, self._dropout_p(), self.kernels,
                               self.rotary)  # (b*s, h) grid rows
        return self.out(o[layout.index] if layout.index is not None else o.view(x.shape))  # like x

    def _forward_queries(self, x: Tensor, layout: TokenLayout, queries: Tensor) -> Tensor:
        """Attention output of the `queries` rows only, (m, h). Keys and values come from every
        token; each grid row's queries are packed into `width` slots (the most queries any row
        has, ~20% of s at 15% masking), so scores are computed only for them."""
        b, s, H, D = layout.batch, layout.seq, self.num_heads, self.head_size
        h = H * D
        w, bias = self.qkv.weight, self.qkv.bias  # rows: [q; k; v]
        kv = layout.scatter(ops.linear(x, w[h:], None if bias is None else bias[h:], self.kernels))  # (b, s, 2h)
        k, v = kv.view(b, s, 2, H, D).unbind(2)  # (b, s, H, D) each
        q = ops.linear(x[queries], w[:h], None if bias is None else bias[:h], self.kernels).view(-1, H, D)  # (m, H, D)
        grid = layout.grid_rows(queries)  # (m,) positions in the (b*s) grid, all distinct
        row, col = grid // s, grid % s
        if self.rotary is not None:
            q, k = self.rotary(q, col), self.rotary(k)
        chosen = torch.zeros(b * s, dtype=torch.int32, device=grid.device).index_fill_(0, grid, 1).view(b, s)
        slot = (chosen.cumsum(1) - 1).view(-1)[grid]  # (m,) rank of each query within its row
        # Under torch.compile the width stays s (no data-dependent size); eagerly it is read.
        width = s if torch.compiler.is_compiling() else max(1, int(chosen.sum(1).max()))
        packed = q.new_zeros(b, ops.query_width(width, s, q, self.kernels), H, D)
        packed[row, slot] = q  # (b, width, H, D)
        o = ops.attention(packed.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), layout.key_mask,
                          self._dropout_p(), self.kernels)  # (b, H, width, D)
        return self.out(o.transpose(1, 2)[row, slot].reshape(-1, h))  # (m, h)

    def _dropout_p(self) -> float:
        return self.attention_dropout if self.training else 0.0


class FeedForward(nn.Module):
    """GELU MLP (h -> f -> h), or GeGLU: GELU(x W) * (x V) -> h, with f = intermediate_size."""

    def __init__(self, cfg: ModelConfig, kernels: ops.Kernels):
        super().__init__()
        self.gated = cfg.activation == "geglu"
        width = 2 * cfg.intermediate_size if self.gated else cfg.intermediate_size
        self.up = Linear(cfg.hidden_size, width, cfg.bias, kernels)
        self.down = Linear(cfg.intermediate_size, cfg.hidden_size, cfg.bias, kernels)

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

    def __init__(self, cfg: ModelConfig, kernels: ops.Kernels):
        super().__init__()
        self.pre_norm = cfg.norm == "pre"
        self.attn_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.attn = SelfAttention(cfg, kernels)
        self.ffn_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.ffn = FeedForward(cfg, kernels)
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
    """Transform (dense, GELU, LayerNorm), then the decoder tied to the word embeddings (passed
    in, not stored: the tied matrix is once in the state_dict). Special tokens get -inf through the
    decoder bias, a (V,) op folded into the matmul instead of a pass over the (tokens, V) logits:
    their probability and every gradient through them are exactly 0. Logits in the compute dtype."""

    def __init__(self, cfg: ModelConfig, kernels: ops.Kernels):
        super().__init__()
        self.dense = Linear(cfg.hidden_size, cfg.hidden_size, cfg.bias, kernels)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size)) if cfg.bias else None
        special = torch.zeros(cfg.vocab_size, dtype=torch.bool)
        special[list(cfg.special_token_ids)] = True
        self.register_buffer("special", special, persistent=False)  # (V,)
        self.kernels = kernels

    def decoder_bias(self) -> Tensor:  # (V,): the learned bias with -inf at special ids
        bias = self.bias if self.bias is not None else torch.zeros_like(self.special, dtype=torch.float32)
        return bias.masked_fill(self.special, float("-inf"))

    def forward(self, x: Tensor, decoder_weight: Tensor) -> Tensor:  # x: (..., h)
        x = self.norm(F.gelu(self.dense(x)))
        return ops.linear(x, decoder_weight, self.decoder_bias(), self.kernels)  # (..., V)


class MLMModel(nn.Module):
    """BERT-style masked language model: embeddings, `layers`, final norm, sparse MLM head.
    forward(input_ids (b, s), attention_mask (b, s) or None, labels (b, s) or None, reduction
    "mean" | "sum") -> MLMOutput. Labels of -100 are not predicted; labels on padding positions
    (attention_mask 0) are ignored. With no labelled token, "mean" is 0. `kernels` (default
    `Kernels()`: "auto") picks how ops are computed; fixed at construction, never saved."""

    def __init__(self, cfg: ModelConfig, kernels: Optional[ops.Kernels] = None):
        super().__init__()
        cfg.validate()
        if cfg.vocab_size <= 0:
            raise ConfigError(f"model.vocab_size must be positive, got {cfg.vocab_size} "
                              "(set it, or let the trainer take it from the tokenizer)")
        bad = [i for i in cfg.special_token_ids if not 0 <= i < cfg.vocab_size]
        if bad:
            raise ConfigError(f"model.special_token_ids {bad} are outside the vocabulary (size {cfg.vocab_size})")
        self.cfg = cfg
        self.kernels = kernels if kernels is not None else ops.Kernels()
        self.embeddings = Embeddings(cfg)
        self.layers = nn.ModuleList(Block(cfg, self.kernels) for _ in range(cfg.num_layers))
        # Pre-LN leaves the residual stream unnormalized; post-LN blocks end in a norm already.
        self.final_norm = (nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, bias=cfg.bias)
                           if cfg.norm == "pre" else nn.Identity())
        self.head = MLMHead(cfg, self.kernels)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Normal(0, init_std) weights, zero biases, unit norms (BERT). `scaled_residual_init`: the
        projections into the residual stream (attention out, FFN down) get std / sqrt(2 * layers),
        so its variance does not grow with depth (GPT-2): for deep models; slower at 4 layers."""
        std = self.cfg.init_std
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, 0.0, std)
            if isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
            if isinstance(module, (nn.Linear, nn.LayerNorm)) and module.bias is not None:
                nn.init.zeros_(module.bias)
        if self.cfg.scaled_residual_init:
            residual_std = std / math.sqrt(2 * self.cfg.num_layers)
            for block in self.layers:
                nn.init.normal_(block.attn.out.weight, 0.0, residual_std)
                nn.init.normal_(block.ffn.down.weight, 0.0, residual_std)
        if self.head.bias is not None:
            nn.init.zeros_(self.head.bias)

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
                raise ValueError(f"{name} shape {tuple(t.shape)} does not match input_ids {tuple(input_ids.shape)}")

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
        index = real.reshape(-1).nonzero().squeeze(1) if self.kernels.unpad else None  # (n,)
        return TokenLayout(b, s, index, key_mask)

    def _encode(self, input_ids: Tensor, layout: TokenLayout, keep: Optional[Tensor] = None) -> Tensor:
        """Final states of all tokens, (b, s, h) or (n, h); with `keep` (m,) token rows, of those
        rows only (m, h): the last layer then computes queries, attention outputs and its
        feed-forward only for them (~70% of that layer's work saved at 15% masking)."""
        x = self.embeddings(input_ids, layout)  # (b, s, h) or (n, h)
        for i, block in enumerate(self.layers):
            x = block(x, layout, keep if i == len(self.layers) - 1 else None)
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
            logits = self.head(self._encode(input_ids, layout), decoder_weight)  # dense: (b, s, V) or (n, V)
            if layout.index is not None:  # re-padded: logits 0 at padding, special ids -inf
                logits = layout.scatter(logits).masked_fill(self.head.special, float("-inf"))  # (b, s, V)
            return MLMOutput(None, logits, None)
        # Sparse prediction: the last layer's outputs and the head only for labelled tokens.
        flat_labels = layout.gather(labels).reshape(-1)  # (b*s,) or (n,)
        predict = flat_labels != IGNORE_INDEX
        picked = predict.nonzero().squeeze(1)  # (m,) token rows
        m = picked.shape[0]
        picked = ops.pad_predicted_rows(picked, predict, self.kernels)  # (m',) m' >= m; filler is unlabelled
        target = flat_labels[picked]  # (m',)
        hidden = self._encode(input_ids, layout, keep=picked)  # (m', h)
        logits = self.head(hidden, decoder_weight)  # (m', V)
        loss = ops.summed_cross_entropy(logits, target, self.kernels)  # fp32; filler rows add 0
        if reduction == "mean":
            loss = loss / predict.sum().clamp(min=1)
        return MLMOutput(loss, logits[:m], target[:m])

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Unique parameters (the tied decoder is the word embedding, counted once)."""
        total = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            total -= self.embeddings.word.weight.numel()
            if self.embeddings.position is not None:
                total -= self.embeddings.position.weight.numel()
        return total

    def flops_per_token(self, seq_len: int, masked_fraction: float = 0.15) -> float:
        """Training FLOPs per input token (forward + backward = 3 x forward), for MFU: 6 x the
        matmul weights every token passes through (QKV, attention out, FFN), attention scores and
        sum 12 * layers * h * seq_len, and the head 6 * (h^2 + h*V) on the `masked_fraction` of
        tokens it runs on (1.0: a dense head). Lookups, norms and activations are not counted (6N)."""
        h, V, L = self.cfg.hidden_size, self.cfg.vocab_size, self.cfg.num_layers
        per_token_matmul = sum(m.weight.numel() for m in self.layers.modules() if isinstance(m, nn.Linear))
        head_matmul = h * h + h * V
        attention = 12 * L * h * seq_len
        return float(6 * per_token_matmul + attention + 6 * masked_fraction * head_matmul)
