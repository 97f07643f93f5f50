"""Export a checkpoint to a `transformers` folder, and import a transformers BERT back.

    python -m mlm.export_hf <checkpoint> <dir>              # ours -> transformers
    python -m mlm.export_hf --import <hf_dir> <output_dir>  # transformers -> ours (continue pretraining)

Why exact mappings only: the common complaint about new encoders is that their checkpoints
load in `transformers` with silently wrong (or random) weights. So each of our model options
maps to a transformers architecture that computes *the same function*, the export reloads
the folder with `AutoModelForMaskedLM` and compares logits before it reports success, and an
option with no exact equivalent is refused with a reason instead of approximated:

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
probability underflows to 0 in fp32/bf16/fp16 and argmax/top-k never return them; all other
logits equal ours within 1e-4 (fp32), which the export checks.

Import (`import_hf`) inverts the same tables for BERT, RoBERTa-PreLayerNorm and RoFormer
folders whose tokenizer has [PAD]/[MASK] tokens. A BERT checkpoint maps to norm=post,
position=learned (our default config is pre-LN); its token-type-0 embedding is folded into
the position embeddings, which is exact for single-segment input (all our pretraining).
It writes `<output_dir>/checkpoints/step_0` plus `<output_dir>/config.yaml`, so
`python -m mlm.train --config <output_dir>/config.yaml ...` continues pretraining from it.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from mlm.config import Config, ModelConfig, config_to_dict
from mlm.errors import UserError, run_cli
from mlm.tokenizer import CLS, MASK, PAD, SEP, UNK, special_token_ids

SPECIAL_LOGIT = -10000.0  # added to the exported decoder bias at special ids
TOLERANCE = 1e-4  # max |logit difference| accepted by the export/import check (fp32)

_ARCHS = {
    # name: (transformers config class, masked-LM class, base-model prefix)
    "bert": ("BertConfig", "BertForMaskedLM", "bert"),
    "roberta-prelayernorm": ("RobertaPreLayerNormConfig", "RobertaPreLayerNormForMaskedLM", "roberta_prelayernorm"),
    "roformer": ("RoFormerConfig", "RoFormerForMaskedLM", "roformer"),
}
_CLASS_TO_ARCH = {cls: name for name, (_, cls, _) in _ARCHS.items()}


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise UserError("export/import needs transformers: pip install 'transformers>=4.40'") from None
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


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


def _position_offset(arch: str, pad_token_id: int) -> int:
    """RoBERTa numbers real tokens from padding_idx + 1; BERT from 0."""
    return pad_token_id + 1 if arch == "roberta-prelayernorm" else 0


def _rotary_permutation(head_size: int) -> Tensor:
    """perm[j] = our channel that RoFormer's channel j holds: our rotate-half pairs (i, i + D/2)
    become RoFormer's interleaved pairs (2i, 2i + 1), with the same frequency and sign."""
    half = head_size // 2
    perm = torch.empty(head_size, dtype=torch.long)
    perm[0::2] = torch.arange(half)
    perm[1::2] = torch.arange(half) + half
    return perm


def _layer_names(arch: str, prefix: str, i: int) -> dict[str, str]:
    """Our per-layer parameter name (without `layers.i.`) -> the transformers name (without .weight/.bias)."""
    base = f"{prefix}.encoder.layer.{i}"
    names = {"attn.out": f"{base}.attention.output.dense", "ffn.up": f"{base}.intermediate.dense",
             "ffn.down": f"{base}.output.dense"}
    if arch == "roberta-prelayernorm":
        names.update({"attn_norm": f"{base}.attention.LayerNorm", "ffn_norm": f"{base}.intermediate.LayerNorm"})
    else:  # post-LN: the norm after each residual sum
        names.update({"attn_norm": f"{base}.attention.output.LayerNorm", "ffn_norm": f"{base}.output.LayerNorm"})
    return names


def _head_names(arch: str) -> tuple[str, str, str, str]:
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
        max_position_embeddings=cfg.max_seq_len + _position_offset(arch, cfg.pad_token_id),
        type_vocab_size=2, layer_norm_eps=cfg.layer_norm_eps, initializer_range=cfg.init_std,
        pad_token_id=cfg.pad_token_id, tie_word_embeddings=True)
    if arch == "roberta-prelayernorm":
        kwargs.update(bos_token_id=cls_id, eos_token_id=sep_id)
    return kwargs


def to_hf_state(state: dict[str, Tensor], cfg: ModelConfig, arch: str) -> dict[str, Tensor]:
    """Our state_dict -> the transformers masked-LM state_dict (fp32), no-op pieces filled in."""
    _, _, prefix = _ARCHS[arch]
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
        offset = _position_offset(arch, cfg.pad_token_id)
        positions = torch.zeros(cfg.max_seq_len + offset, h)
        positions[offset:] = get("embeddings.position.weight", (cfg.max_seq_len, h))
        hf[f"{emb}.position_embeddings.weight"] = positions
    norm("embeddings.norm", f"{emb}.LayerNorm")
    perm = None
    if arch == "roformer":
        d = h // cfg.num_heads
        perm = (torch.arange(cfg.num_heads)[:, None] * d + _rotary_permutation(d)[None, :]).reshape(-1)
    for i in range(cfg.num_layers):
        names = _layer_names(arch, prefix, i)
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
    dense, head_norm, decoder, bias_name = _head_names(arch)
    linear("head.dense", h, h, dense)
    norm("head.norm", head_norm)
    bias = get("head.bias", (cfg.vocab_size,))
    bias[list(cfg.special_token_ids)] += SPECIAL_LOGIT
    hf[bias_name] = bias
    hf[f"{decoder}.weight"] = word
    hf[f"{decoder}.bias"] = bias
    return hf


def _hf_tokenizer(tokenizer: Any, max_len: int) -> Any:
    """Wrap our tokenizers.Tokenizer for transformers (saved as tokenizer.json + tokenizer_config.json)."""
    from transformers import PreTrainedTokenizerFast

    names = {"unk_token": UNK, "pad_token": PAD, "cls_token": CLS, "sep_token": SEP, "mask_token": MASK}
    present = {k: v for k, v in names.items() if tokenizer.token_to_id(v) is not None}
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, model_max_length=max_len, **present)


def export_hf(checkpoint: str | Path, out_dir: str | Path, check: bool = True) -> dict[str, Any]:
    """Write a folder that `AutoModelForMaskedLM` / `AutoTokenizer.from_pretrained` load offline.

    With `check`, reload it and compare logits against ours (non-special columns, real tokens);
    returns {"architecture", "path", "max_abs_diff"}.
    """
    from mlm.checkpoint import load_pretrained, resolve_checkpoint

    tf = _transformers()
    ckpt = resolve_checkpoint(checkpoint)
    model, tokenizer = load_pretrained(ckpt)
    cfg = model.cfg
    arch = hf_architecture(cfg)
    config_cls, model_cls, _ = _ARCHS[arch]
    hf_config = getattr(tf, config_cls)(**hf_config_kwargs(cfg, arch, tokenizer.token_to_id(CLS),
                                                            tokenizer.token_to_id(SEP)))
    hf_config.architectures = [model_cls]
    hf_model = getattr(tf, model_cls)(hf_config)
    missing, unexpected = hf_model.load_state_dict(to_hf_state(model.state_dict(), cfg, arch), strict=False)
    missing = [k for k in missing if not k.endswith("embed_positions.weight")]  # RoFormer: fixed sinusoids
    if missing or unexpected:
        raise RuntimeError(f"export mapping incomplete for {model_cls}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not (out / "config.json").is_file():
        raise UserError(f"{out}: exists and is not an exported model folder; choose an empty or new folder")
    out.mkdir(parents=True, exist_ok=True)
    hf_model.save_pretrained(out)
    _hf_tokenizer(tokenizer, cfg.max_seq_len).save_pretrained(out)
    result: dict[str, Any] = {"architecture": model_cls, "path": str(out), "checkpoint": str(ckpt)}
    if check:
        reloaded = tf.AutoModelForMaskedLM.from_pretrained(out).eval()
        result["max_abs_diff"] = compare_logits(model, tokenizer, lambda ids, mask: reloaded(
            input_ids=ids, attention_mask=mask).logits)
    return result


# ---------------------------------------------------------------- comparison

SAMPLE_TEXTS = ("the quick brown fox jumps over the lazy dog .",
                "return a new list containing all items from the iterable in ascending order .",
                "x")


def sample_batch(tokenizer: Any, max_len: int) -> tuple[Tensor, Tensor]:
    """A small padded batch (rows of different lengths, one with a [MASK]) for logit comparisons."""
    texts = list(SAMPLE_TEXTS)
    if tokenizer.token_to_id(MASK) is not None:
        texts[0] = texts[0].replace("lazy", MASK)
    rows = [tokenizer.encode(t).ids[:max_len] for t in texts]
    pad = tokenizer.token_to_id(PAD) or 0
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
    return ids, mask


@torch.no_grad()
def compare_logits(model: Any, tokenizer: Any, hf_logits: Callable[[Tensor, Tensor], Tensor],
                   tolerance: float = TOLERANCE) -> float:
    """Max |ours - theirs| over real tokens and non-special vocabulary columns; raises above tolerance."""
    model.eval()
    ids, mask = sample_batch(tokenizer, model.cfg.max_seq_len)
    ours = model(ids, attention_mask=mask).logits.float()
    theirs = hf_logits(ids, mask).float()
    keep = torch.ones(ours.shape[-1], dtype=torch.bool)
    keep[list(model.cfg.special_token_ids)] = False
    real = mask.bool()
    diff = float((ours[real][:, keep] - theirs[real][:, keep]).abs().max())
    if not diff <= tolerance:
        raise RuntimeError(f"logits differ by {diff:.3g} (> {tolerance:g}) between mlm and transformers; "
                           "the mapping is wrong for this model, please report it")
    return diff


# ---------------------------------------------------------------- transformers -> ours

def from_hf_state(hf: dict[str, Tensor], hf_config: Any, arch: str) -> tuple[ModelConfig, dict[str, Tensor]]:
    """A transformers masked-LM state_dict -> (our ModelConfig without tokenizer facts, our state_dict)."""
    _, _, prefix = _ARCHS[arch]
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
    dense, head_norm, decoder, bias_name = _head_names(arch)
    word = hf[f"{emb}.word_embeddings.weight"].float()
    if f"{decoder}.weight" in hf and not torch.equal(hf[f"{decoder}.weight"].float(), word):
        raise UserError("the decoder weight is not tied to the word embeddings; mlm models tie them")
    token_type0 = hf[f"{emb}.token_type_embeddings.weight"][0].float() \
        if f"{emb}.token_type_embeddings.weight" in hf else torch.zeros(h)
    ours: dict[str, Tensor] = {"embeddings.word.weight": word}
    position = "rotary" if arch == "roformer" else "learned"
    pad_id = hf_config.pad_token_id if hf_config.pad_token_id is not None else 0
    if position == "learned":
        offset = _position_offset(arch, pad_id)
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
        inverse = torch.argsort(_rotary_permutation(d))
        perm = (torch.arange(hf_config.num_attention_heads)[:, None] * d + inverse[None, :]).reshape(-1)
    for i in range(n_layers):
        names = _layer_names(arch, prefix, i)
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


def import_hf(hf_dir: str | Path, out_dir: str | Path, check: bool = True) -> Path:
    """Convert a local transformers BERT / RoBERTa-PreLayerNorm / RoFormer masked-LM folder into a
    checkpoint at `<out_dir>/checkpoints/step_0`, with `<out_dir>/config.yaml` to continue pretraining.

    Returns the checkpoint folder (usable with `load_pretrained`, `init_from=`, fill-mask...).
    """
    from tokenizers import Tokenizer

    from mlm import checkpoint as ckpt_io
    from mlm.model import MLMModel

    tf = _transformers()
    hf_dir, out = Path(hf_dir), Path(out_dir)
    if not (hf_dir / "config.json").is_file():
        raise UserError(f"{hf_dir}: not a transformers model folder (no config.json)")
    try:
        hf_model = tf.AutoModelForMaskedLM.from_pretrained(hf_dir, local_files_only=True).float().eval()
        hf_tok = tf.AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"{hf_dir}: transformers cannot load it ({str(err).splitlines()[0][:200]})") from None
    arch = _CLASS_TO_ARCH.get(type(hf_model).__name__)
    if arch is None:
        raise UserError(f"{hf_dir}: {type(hf_model).__name__} is not importable; supported: "
                        f"{', '.join(_CLASS_TO_ARCH)}")
    backend = getattr(hf_tok, "backend_tokenizer", None)
    if backend is None:
        raise UserError(f"{hf_dir}: needs a fast tokenizer (tokenizer.json)")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out}: already exists and is not empty; choose a new output folder")
    tokenizer = Tokenizer.from_str(backend.to_str())
    tokenizer.no_padding()
    tokenizer.no_truncation()
    missing = [name for name in (PAD, MASK) if tokenizer.token_to_id(name) is None]
    if missing:
        raise UserError(f"{hf_dir}: the tokenizer has no {' or '.join(missing)} token; mlm needs BERT-style "
                        f"special tokens ({PAD}, {MASK}, {CLS}, {SEP})")
    cfg, state = from_hf_state(hf_model.state_dict(), hf_model.config, arch)
    if tokenizer.get_vocab_size() > cfg.vocab_size:
        raise UserError(f"{hf_dir}: tokenizer has {tokenizer.get_vocab_size()} tokens but the model only "
                        f"{cfg.vocab_size} embeddings")
    cfg.pad_token_id = tokenizer.token_to_id(PAD)
    cfg.special_token_ids = special_token_ids(tokenizer)
    model = MLMModel(cfg)
    model.load_state_dict(state, strict=True)
    model.eval()
    if check:
        compare_logits(model, tokenizer, lambda ids, mask: hf_model(input_ids=ids, attention_mask=mask).logits)
    out.mkdir(parents=True, exist_ok=True)  # written only now: a refused import leaves nothing behind
    tokenizer_path = out / ckpt_io.TOKENIZER_FILE
    tokenizer_path.write_text(tokenizer.to_str(), encoding="utf-8")
    run = Config(output_dir=str(out), model=cfg)
    run.data.tokenizer = str(tokenizer_path)
    run.data.vocab_size = tokenizer.get_vocab_size()
    run.data.seq_len = min(run.data.seq_len, cfg.max_seq_len)
    run_yaml = _yaml(config_to_dict(run))
    (out / ckpt_io.RUN_CONFIG_FILE).write_text(run_yaml, encoding="utf-8")
    return ckpt_io.save_checkpoint(out / "checkpoints", 0, model.state_dict(), asdict(cfg), tokenizer.to_str(),
                                   run_yaml, _fresh_trainer_state(model, run), keep=0)


def _fresh_trainer_state(model: Any, run: Config) -> dict[str, Any]:
    """A step-0 trainer state (empty AdamW moments), so `mlm.train` resumes from the imported weights."""
    from mlm.train import build_optimizer, full_optimizer_state, rng_state

    optimizer = build_optimizer(model, run.train, torch.device("cpu"))
    return {"step": 0, "optimizer": full_optimizer_state(model, optimizer), "rng": rng_state(),
            "bad_in_a_row": 0, "samples_seen": 0}


def _yaml(data: dict[str, Any]) -> str:
    import yaml
    return yaml.safe_dump(data, sort_keys=False)


# ---------------------------------------------------------------- CLI

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlm.export_hf", description=__doc__.splitlines()[0])
    parser.add_argument("source", help="checkpoint folder or run output_dir (with --import: a transformers folder)")
    parser.add_argument("target", help="folder to write")
    parser.add_argument("--import", dest="import_", action="store_true",
                        help="convert a transformers BERT-family folder into an mlm checkpoint instead")
    parser.add_argument("--no-check", action="store_true", help="skip the logit comparison")
    args = parser.parse_args(argv)
    if args.import_:
        path = import_hf(args.source, args.target, check=not args.no_check)
        print(f"imported {args.source} -> {path}")
        print(f"continue pretraining: python -m mlm.train --config {Path(args.target) / 'config.yaml'} "
              "data.train_files=[...]")
        return 0
    result = export_hf(args.source, args.target, check=not args.no_check)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    run_cli(main)
