"""Export a checkpoint to a `transformers` folder, and import a transformers BERT-family folder back.

The export writes the folder with the mapped weights (`mlm.hf.mapping`), reloads it with
`AutoModelForMaskedLM` and compares logits with ours on a padded batch before it reports success;
the import checks the other way, then writes a step-0 checkpoint and a run config so `mlm.train`
continues pretraining from it.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch
from tokenizers import Tokenizer
from torch import Tensor

from mlm import checkpoint as ckpt
from mlm.config import Config, config_to_dict
from mlm.errors import UserError
from mlm.hf.mapping import (ARCHITECTURES, CLASS_TO_ARCHITECTURE, TOLERANCE, from_hf_state, hf_architecture,
                            hf_config_kwargs, to_hf_state)
from mlm.model import MLMModel
from mlm.optim import build_optimizer
from mlm.padding import pad_batch
from mlm.schema import to_yaml
from mlm.tokenizer import CLS, MASK, PAD, SEP, UNK, special_token_ids


def transformers_module() -> Any:
    try:
        import transformers
    except ImportError:
        raise UserError("export/import needs transformers: pip install 'transformers>=4.40'") from None
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


def hf_tokenizer(tokenizer: Any, max_len: int) -> Any:
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
    tf = transformers_module()
    found = ckpt.resolve_checkpoint(checkpoint)
    model, tokenizer = ckpt.load_pretrained(found)
    cfg = model.cfg
    arch = hf_architecture(cfg)
    config_cls, model_cls, _ = ARCHITECTURES[arch]
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
    hf_tokenizer(tokenizer, cfg.max_seq_len).save_pretrained(out)
    result: dict[str, Any] = {"architecture": model_cls, "path": str(out), "checkpoint": str(found)}
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
    return pad_batch(rows, tokenizer.token_to_id(PAD) or 0)


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


def import_hf(hf_dir: str | Path, out_dir: str | Path, check: bool = True) -> Path:
    """Convert a local transformers BERT / RoBERTa-PreLayerNorm / RoFormer masked-LM folder into a
    checkpoint at `<out_dir>/checkpoints/step_0`, with `<out_dir>/config.yaml` to continue pretraining.

    Returns the checkpoint folder (usable with `load_pretrained`, `init_from=`, fill-mask...).
    """
    tf = transformers_module()
    hf_dir, out = Path(hf_dir), Path(out_dir)
    if not (hf_dir / "config.json").is_file():
        raise UserError(f"{hf_dir}: not a transformers model folder (no config.json)")
    try:
        hf_model = tf.AutoModelForMaskedLM.from_pretrained(hf_dir, local_files_only=True).float().eval()
        hf_tok = tf.AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"{hf_dir}: transformers cannot load it ({str(err).splitlines()[0][:200]})") from None
    arch = CLASS_TO_ARCHITECTURE.get(type(hf_model).__name__)
    if arch is None:
        raise UserError(f"{hf_dir}: {type(hf_model).__name__} is not importable; supported: "
                        f"{', '.join(CLASS_TO_ARCHITECTURE)}")
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
    tokenizer_path = out / ckpt.TOKENIZER_FILE
    tokenizer_path.write_text(tokenizer.to_str(), encoding="utf-8")
    run = Config(output_dir=str(out), model=cfg)
    run.data.tokenizer = str(tokenizer_path)
    run.data.vocab_size = tokenizer.get_vocab_size()
    run.data.seq_len = min(run.data.seq_len, cfg.max_seq_len)
    run_yaml = to_yaml(config_to_dict(run))
    (out / ckpt.RUN_CONFIG_FILE).write_text(run_yaml, encoding="utf-8")
    contents = ckpt.CheckpointContents(model.state_dict(), asdict(cfg), tokenizer.to_str(), run_yaml,
                                       fresh_trainer_state(model, run))
    return ckpt.save_checkpoint(out / "checkpoints", 0, contents)


def fresh_trainer_state(model: Any, run: Config) -> dict[str, Any]:
    """A step-0 trainer state (empty AdamW moments), so `mlm.train` resumes from the imported weights."""
    t = run.train
    optimizer = build_optimizer(model, t.lr, t.weight_decay, (t.beta1, t.beta2), t.eps, torch.device("cpu"))
    return {"step": 0, "optimizer": ckpt.full_optimizer_state(model, optimizer), "rng": ckpt.rng_state(),
            "bad_in_a_row": 0, "samples_seen": 0}


