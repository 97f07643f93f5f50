"""Exact parameter mappings between our encoder and transformers' BERT-family masked-LM classes.

Why exact mappings only: the common complaint about new encoders is that their checkpoints load in
`transformers` with silently wrong (or random) weights. So each of our model options maps to a
transformers architecture that computes *the same function*, and an option with no exact
equivalent is refused with a reason instead of approximated:

    norm=post, position=learned, gelu -> BertForMaskedLM
    norm=pre,  position=learned, gelu -> RobertaPreLayerNormForMaskedLM (positions shifted by
                                         pad_token_id + 1, as RoBERTa numbers them)
    norm=post, position=rotary,  gelu -> RoFormerForMaskedLM (rope_theta 10000 only; the
                                         rotate-half channel order is permuted to RoFormer's
                                         interleaved pairs inside each head's q and k)
    activation=geglu, or rotary + pre  -> refused. ModernBERT is the only pre-LN + rotary +
                                         GeGLU encoder in transformers, but its first layer has
                                         no attention LayerNorm (ours has one in every layer)
                                         and its rotary/attention windows differ, so the
                                         logits would not match.

Missing pieces are filled with the values that make them a no-op: our model has no segment
(token type) embeddings, so they are exported as zeros; `bias=false` exports zero biases.
Special tokens: our logits are -inf at special ids (probability exactly 0). transformers has
no such mask, so the export adds `SPECIAL_LOGIT` (-10000) to the decoder bias there: their
probability underflows to 0 in fp32/bf16/fp16 and argmax/top-k never return them.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mlm.errors import UserError
from mlm.model import ModelConfig

SPECIAL_LOGIT = -10000.0  # added to the exported decoder bias at special ids
TOLERANCE = 1e-4  # max |logit difference| accepted by the export/import check (fp32)

ARCHITECTURES = {
    # name: (transformers config class, masked-LM class, base-model prefix)
    "bert": ("BertConfig", "BertForMaskedLM", "bert"),
    "roberta-prelayernorm": ("RobertaPreLayerNormConfig", "RobertaPreLayerNormForMaskedLM", "roberta_prelayernorm"),
    "roformer": ("RoFormerConfig", "RoFormerForMaskedLM", "roformer"),
}
CLASS_TO_ARCHITECTURE = {cls: name for name, (_, cls, _) in ARCHITECTURES.items()}


# ---------------------------------------------------------------- which architecture

def hf_architecture(cfg: ModelConfig) -> str:
    """The transformers architecture computing exactly our function, or a UserError saying why none does."""
    if cfg.activation != "gelu":
        raise UserError(f"model.activation={cfg.activation} has no exact transformers equivalent: ModernBERT "
                        "(the only GeGLU encoder there) has no attention LayerNorm in its first layer and a "
                        "different rotary/attention layout, so its logits would differ; export needs activation=gelu")
    if cfg.position == "learned":
        return "bert" if cfg.norm == "post" else "roberta-prelayernorm"
    if cfg.norm == "pre":
        raise UserError("model.position=rotary with model.norm=pre has no exact transformers equivalent "
                        "(RoFormer is post-LN; ModernBERT skips the first layer's attention LayerNorm); "
                        "export needs position=learned, or rotary with norm=post")
    if cfg.rope_theta != 10000.0:
        raise UserError(f"model.rope_theta={cfg.rope_theta:g}: RoFormer (the rotary post-LN encoder in "
                        "transformers) fixes theta at 10000; export needs rope_theta=10000")
    return "roformer"


def position_offset(arch: str, pad_token_id: int) -> int:
    """RoBERTa numbers real tokens from padding_idx + 1; BERT from 0."""
    return pad_token_id + 1 if arch == "roberta-prelayernorm" else 0


def rotary_permutation(head_size: int) -> Tensor:
    """perm[j] = our channel that RoFormer's channel j holds: our rotate-half pairs (i, i + D/2)
    become RoFormer's interleaved pairs (2i, 2i + 1), with the same frequency and sign."""
    half = head_size // 2
    perm = torch.empty(head_size, dtype=torch.long)
    perm[0::2] = torch.arange(half)
    perm[1::2] = torch.arange(half) + half
    return perm


def layer_names(arch: str, prefix: str, i: int) -> dict[str, str]:
    """Our per-layer parameter name (without `layers.i.`) -> the transformers name (without .weight/.bias)."""
    base = f"{prefix}.encoder.layer.{i}"
    names = {"attn.out": f"{base}.attention.output.dense", "ffn.up": f"{base}.intermediate.dense",
             "ffn.down": f"{base}.output.dense"}
    if arch == "roberta-prelayernorm":
        names.update({"attn_norm": f"{base}.attention.LayerNorm", "ffn_norm": f"{base}.intermediate.LayerNorm"})
    else:  # post-LN: the norm after each residual sum
        names.update({"attn_norm": f"{base}.attention.output.LayerNorm", "ffn_norm": f"{base}.output.LayerNorm"})
    return names


def head_names(arch: str) -> tuple[str, str, str, str]:
    """(transform dense, transform norm, decoder, output bias) names of the masked-LM head."""
    if arch == "roberta-prelayernorm":
        return "lm_head.dense", "lm_head.layer_norm", "lm_head.decoder", "lm_head.bias"
    return "cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm", "cls.predictions.decoder", \
        "cls.predictions.bias"


# ---------------------------------------------------------------- ours -> transformers

def hf_config_kwargs(cfg: ModelConfig, arch: str, cls_id: int | None, sep_id: int | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size, hidden_act="gelu",
        hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.attention_dropout,
        max_position_embeddings=cfg.max_seq_len + position_offset(arch, cfg.pad_token_id),
        type_vocab_size=2, layer_norm_eps=cfg.layer_norm_eps, initializer_range=cfg.init_std,
        pad_token_id=cfg.pad_token_id, tie_word_embeddings=True)
    if arch == "roberta-prelayernorm":
        kwargs.update(bos_token_id=cls_id, eos_token_id=sep_id)
    return kwargs


def to_hf_state(state: dict[str, Tensor], cfg: ModelConfig, arch: str) -> dict[str, Tensor]:
    """Our state_dict -> the transformers masked-LM state_dict (fp32), no-op pieces filled in."""
    _, _, prefix = ARCHITECTURES[arch]
    h = cfg.hidden_size

    def get(name: str, shape: tuple[int, ...], fill: float = 0.0) -> Tensor:
        t = state.get(name)
        return t.detach().float().clone() if t is not None else torch.full(shape, fill)

    def linear(ours: str, out_features: int, in_features: int, theirs: str) -> None:
        hf[f"{theirs}.weight"] = get(f"{ours}.weight", (out_features, in_features))
        hf[f"{theirs}.bias"] = get(f"{ours}.bias", (out_features,))

    def norm(ours: str, theirs: str) -> None:
        hf[f"{theirs}.weight"] = get(f"{ours}.weight", (h,), 1.0)
        hf[f"{theirs}.bias"] = get(f"{ours}.bias", (h,))

    hf: dict[str, Tensor] = {}
    emb = f"{prefix}.embeddings"
    word = get("embeddings.word.weight", (cfg.vocab_size, h))
    hf[f"{emb}.word_embeddings.weight"] = word
    hf[f"{emb}.token_type_embeddings.weight"] = torch.zeros(2, h)
    if cfg.position == "learned":
        offset = position_offset(arch, cfg.pad_token_id)
        positions = torch.zeros(cfg.max_seq_len + offset, h)
        positions[offset:] = get("embeddings.position.weight", (cfg.max_seq_len, h))
        hf[f"{emb}.position_embeddings.weight"] = positions
    norm("embeddings.norm", f"{emb}.LayerNorm")
    perm = None
    if arch == "roformer":
        d = h // cfg.num_heads
        perm = (torch.arange(cfg.num_heads)[:, None] * d + rotary_permutation(d)[None, :]).reshape(-1)
    for i in range(cfg.num_layers):
        names = layer_names(arch, prefix, i)
        qkv_w = get(f"layers.{i}.attn.qkv.weight", (3 * h, h))
        qkv_b = get(f"layers.{i}.attn.qkv.bias", (3 * h,))
        for j, part in enumerate(("query", "key", "value")):
            w, b = qkv_w[j * h:(j + 1) * h], qkv_b[j * h:(j + 1) * h]
            if perm is not None and part != "value":
                w, b = w[perm], b[perm]
            hf[f"{prefix}.encoder.layer.{i}.attention.self.{part}.weight"] = w.clone()
            hf[f"{prefix}.encoder.layer.{i}.attention.self.{part}.bias"] = b.clone()
        linear(f"layers.{i}.attn.out", h, h, names["attn.out"])
        linear(f"layers.{i}.ffn.up", cfg.intermediate_size, h, names["ffn.up"])
        linear(f"layers.{i}.ffn.down", h, cfg.intermediate_size, names["ffn.down"])
        norm(f"layers.{i}.attn_norm", names["attn_norm"])
        norm(f"layers.{i}.ffn_norm", names["ffn_norm"])
    if cfg.norm == "pre":
        norm("final_norm", f"{prefix}.LayerNorm")
    dense, head_norm, decoder, bias_name = head_names(arch)
    linear("head.dense", h, h, dense)
    norm("head.norm", head_norm)
    bias = get("head.bias", (cfg.vocab_size,))
    bias[list(cfg.special_token_ids)] += SPECIAL_LOGIT
    hf[bias_name] = bias
    hf[f"{decoder}.weight"] = word
    hf[f"{decoder}.bias"] = bias
    return hf


def from_hf_state(hf: dict[str, Tensor], hf_config: Any, arch: str) -> tuple[ModelConfig, dict[str, Tensor]]:
    """A transformers masked-LM state_dict -> (our ModelConfig without tokenizer facts, our state_dict)."""
    _, _, prefix = ARCHITECTURES[arch]
    act = getattr(hf_config, "hidden_act", "gelu")
    if act != "gelu":
        raise UserError(f"config.json: hidden_act={act!r}; mlm models use exact (erf) gelu, so only 'gelu' imports")
    if getattr(hf_config, "position_embedding_type", "absolute") != "absolute":
        raise UserError(f"config.json: position_embedding_type={hf_config.position_embedding_type!r}; "
                        "only 'absolute' imports")
    if getattr(hf_config, "embedding_size", hf_config.hidden_size) != hf_config.hidden_size:
        raise UserError("config.json: embedding_size differs from hidden_size (factorized embeddings); not supported")
    if getattr(hf_config, "rotary_value", False):
        raise UserError("config.json: rotary_value=true (rotary on values too); mlm rotates only queries and keys")
    h, n_layers = hf_config.hidden_size, hf_config.num_hidden_layers
    emb = f"{prefix}.embeddings"
    dense, head_norm, decoder, bias_name = head_names(arch)
    word = hf[f"{emb}.word_embeddings.weight"].float()
    if f"{decoder}.weight" in hf and not torch.equal(hf[f"{decoder}.weight"].float(), word):
        raise UserError("the decoder weight is not tied to the word embeddings; mlm models tie them")
    token_type0 = hf[f"{emb}.token_type_embeddings.weight"][0].float() \
        if f"{emb}.token_type_embeddings.weight" in hf else torch.zeros(h)
    ours: dict[str, Tensor] = {"embeddings.word.weight": word}
    position = "rotary" if arch == "roformer" else "learned"
    pad_id = hf_config.pad_token_id if hf_config.pad_token_id is not None else 0
    if position == "learned":
        offset = position_offset(arch, pad_id)
        positions = hf[f"{emb}.position_embeddings.weight"].float()[offset:]
        ours["embeddings.position.weight"] = positions + token_type0  # exact for token_type_ids == 0
        max_seq_len = positions.shape[0]
    else:
        if token_type0.abs().max() > 0:
            raise UserError("RoFormer token_type_embeddings[0] is not zero and there is no position table to fold "
                            "it into; not supported")
        max_seq_len = hf_config.max_position_embeddings
    ours["embeddings.norm.weight"] = hf[f"{emb}.LayerNorm.weight"]
    ours["embeddings.norm.bias"] = hf[f"{emb}.LayerNorm.bias"]
    perm = None
    if arch == "roformer":
        d = h // hf_config.num_attention_heads
        inverse = torch.argsort(rotary_permutation(d))
        perm = (torch.arange(hf_config.num_attention_heads)[:, None] * d + inverse[None, :]).reshape(-1)
    for i in range(n_layers):
        names = layer_names(arch, prefix, i)
        ws, bs = [], []
        for part in ("query", "key", "value"):
            w = hf[f"{prefix}.encoder.layer.{i}.attention.self.{part}.weight"]
            b = hf[f"{prefix}.encoder.layer.{i}.attention.self.{part}.bias"]
            if perm is not None and part != "value":
                w, b = w[perm], b[perm]
            ws.append(w)
            bs.append(b)
        ours[f"layers.{i}.attn.qkv.weight"] = torch.cat(ws)
        ours[f"layers.{i}.attn.qkv.bias"] = torch.cat(bs)
        for mine in ("attn.out", "ffn.up", "ffn.down", "attn_norm", "ffn_norm"):
            for kind in ("weight", "bias"):
                ours[f"layers.{i}.{mine}.{kind}"] = hf[f"{names[mine]}.{kind}"]
    norm = "post"
    if arch == "roberta-prelayernorm":
        norm = "pre"
        ours["final_norm.weight"] = hf[f"{prefix}.LayerNorm.weight"]
        ours["final_norm.bias"] = hf[f"{prefix}.LayerNorm.bias"]
    for mine, theirs in (("head.dense", dense), ("head.norm", head_norm)):
        for kind in ("weight", "bias"):
            ours[f"{mine}.{kind}"] = hf[f"{theirs}.{kind}"]
    ours["head.bias"] = hf[bias_name] if bias_name in hf else hf[f"{decoder}.bias"]
    cfg = ModelConfig(vocab_size=word.shape[0], hidden_size=h, num_layers=n_layers,
                      num_heads=hf_config.num_attention_heads, intermediate_size=hf_config.intermediate_size,
                      max_seq_len=max_seq_len, position=position, norm=norm, activation="gelu", bias=True,
                      dropout=float(hf_config.hidden_dropout_prob),
                      attention_dropout=float(hf_config.attention_probs_dropout_prob),
                      layer_norm_eps=float(hf_config.layer_norm_eps),
                      init_std=float(getattr(hf_config, "initializer_range", 0.02)), pad_token_id=pad_id)
    return cfg, {k: v.detach().float().contiguous() for k, v in ours.items()}


