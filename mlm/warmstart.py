"""Continued pretraining: start a run from a checkpoint's weights, architecture and tokenizer.

`python -m mlm.train ... train.init_from=runs/base data.train_files=[...] output_dir=runs/new` trains
the checkpoint on new data with a fresh optimizer and schedule (Gururangan et al. 2020, "Don't stop
pretraining"). The trainer only calls this module: `warm_start` resolves and checks train.init_from
before any work (one `UserError` line for what cannot work), `WarmStart.model_config` is the
architecture to build, `WarmStart.load_weights` loads the weights into it.

With data.extend_vocab the tokenizer gains the new corpus's most split words
(`mlm.tokenizer.extend_tokenizer`, run by `mlm.data.prepare_data`); the embedding and decoder-bias
rows of each new token start as the mean of the rows of the old pieces it replaces
(`mlm.tokenizer.replaced_pieces`), every old row is kept as it was. A run that already has
checkpoints of its own resumes from them as usual: its tokenizer and architecture are then those of
its newest checkpoint, and no weights are loaded from train.init_from.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tokenizers import Tokenizer

from mlm.checkpoint import TOKENIZER_FILE, load_model_config, load_model_weights, resolve_checkpoint
from mlm.config import DataConfig
from mlm.errors import UserError
from mlm.model import ModelConfig
from mlm.schema import ConfigError, from_dict
from mlm.tokenizer import (EXTENDABLE_KINDS, PAD, load_tokenizer, model_config_for, replaced_pieces,
                           special_token_ids, token_id, tokenizer_hash, tokenizer_kind)

if TYPE_CHECKING:
    from mlm.config import Config
    from mlm.model import MLMModel

# Model keys a continued run takes from the checkpoint, or from the config where it sets them (these
# shape training or the first weights, not the function the weights compute).
FREE_MODEL_KEYS = ("dropout", "attention_dropout", "init_std", "scaled_residual_init")
# Filled from the tokenizer.
VOCABULARY_KEYS = ("vocab_size", "pad_token_id", "special_token_ids")
DEFAULT_MODEL = {f.name: f.default for f in fields(ModelConfig)}
DEFAULT_DATA = DataConfig()


@dataclass
class WarmStart:
    """Where a run's weights, architecture and tokenizer come from. `checkpoint` None: a run from
    scratch (everything from the config); `load` False: resuming the run's own checkpoint."""

    checkpoint: Path | None = None
    saved_model: ModelConfig | None = None
    tokenizer: Tokenizer | None = None  # the checkpoint's: what prepare_data starts from
    extend_vocab: int = 0
    load: bool = False

    def model_config(self, configured: ModelConfig, tokenizer: Tokenizer) -> ModelConfig:
        """The architecture to build: the checkpoint's (with the config's values of FREE_MODEL_KEYS where
        it sets them) and a vocabulary large enough for `tokenizer`; the config's without a checkpoint."""
        if self.saved_model is None:
            return model_config_for(configured, tokenizer)
        free = {k: getattr(configured, k) for k in FREE_MODEL_KEYS if getattr(configured, k) != DEFAULT_MODEL[k]}
        size = max(self.saved_model.vocab_size, configured.vocab_size, tokenizer.get_vocab_size(with_added_tokens=True))
        return replace(self.saved_model, **free, vocab_size=size, pad_token_id=token_id(tokenizer, PAD),
                       special_token_ids=special_token_ids(tokenizer))

    def load_weights(self, model: MLMModel, tokenizer: Tokenizer, verbose: bool = True) -> None:
        """Load the checkpoint's weights into `model` (built with `model_config`), growing the vocabulary
        rows for the tokens `tokenizer` adds; nothing when starting from scratch or resuming."""
        if not self.load or self.checkpoint is None or self.tokenizer is None:
            return
        pieces = replaced_pieces(self.tokenizer, tokenizer)
        state = grown_state(load_model_weights(self.checkpoint), model.state_dict(), pieces, self.checkpoint)
        model.load_state_dict(state)
        if verbose:
            added = f", {len(pieces):,} new tokens initialised from their old pieces" if pieces else ""
            print(f"starting from {self.checkpoint} (weights and tokenizer{added}; fresh optimizer and schedule)",
                  file=sys.stderr)


def warm_start(cfg: Config, resume_from: Path | None) -> WarmStart:
    """train.init_from resolved and checked before any work. `resume_from`, the run's own newest
    checkpoint, wins: its tokenizer and architecture are kept and no weights are loaded here."""
    init_from, d = cfg.train.init_from, cfg.data
    if not init_from:
        if d.extend_vocab:
            raise UserError("data.extend_vocab needs train.init_from (the checkpoint whose tokenizer it extends)")
        return WarmStart()
    source = resume_from if resume_from is not None else resolve_init(init_from)
    try:
        saved = from_dict(ModelConfig, load_model_config(source), prefix="model.")
    except ConfigError as err:
        raise UserError(f"train.init_from: {source}: unreadable model config ({err})") from None
    tokenizer = load_tokenizer(source / TOKENIZER_FILE)
    check_architecture(cfg.model, saved, source)
    check_tokenizer_settings(d, tokenizer, saved, source)
    return WarmStart(source, saved, tokenizer, 0 if resume_from is not None else d.extend_vocab,
                     load=resume_from is None)


def resolve_init(init_from: str) -> Path:
    try:
        return resolve_checkpoint(Path(init_from).expanduser())
    except UserError as err:
        raise UserError(f"train.init_from: {err}") from None


def check_architecture(configured: ModelConfig, saved: ModelConfig, source: Path) -> None:
    """The config's model section must be the checkpoint's architecture: each key at its default (then
    the checkpoint's value is used) or equal to the checkpoint's; model.vocab_size may only grow."""
    if configured.vocab_size and configured.vocab_size < saved.vocab_size:
        raise UserError(f"model.vocab_size ({configured.vocab_size}) is smaller than the vocabulary of "
                        f"train.init_from {source} ({saved.vocab_size}); remove it or make it larger")
    for f in fields(ModelConfig):
        if f.name in FREE_MODEL_KEYS or f.name in VOCABULARY_KEYS:
            continue
        mine, theirs = getattr(configured, f.name), getattr(saved, f.name)
        if mine != DEFAULT_MODEL[f.name] and mine != theirs:
            raise UserError(f"model.{f.name} is {mine!r} in the config but {theirs!r} in train.init_from {source}: "
                            "a continued run keeps the checkpoint's architecture; remove the key or set it to "
                            f"{theirs!r}")


def check_tokenizer_settings(d: DataConfig, tokenizer: Tokenizer, saved: ModelConfig, source: Path) -> None:
    """The checkpoint's tokenizer is the run's: refuse settings that would mean another one."""
    kind = tokenizer_kind(tokenizer)
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    if d.tokenizer:
        other = load_tokenizer(Path(d.tokenizer).expanduser())
        if tokenizer_hash(other) != tokenizer_hash(tokenizer):
            raise UserError(f"data.tokenizer points to {d.tokenizer}, but a run with train.init_from uses the "
                            f"checkpoint's tokenizer ({source / TOKENIZER_FILE}); remove data.tokenizer "
                            "(data.extend_vocab adds tokens of the new corpus)")
    if d.tokenizer_type != DEFAULT_DATA.tokenizer_type and d.tokenizer_type != kind:
        raise UserError(f"data.tokenizer_type is {d.tokenizer_type}, but train.init_from {source} has a {kind} "
                        "tokenizer, which the run keeps; remove data.tokenizer_type")
    if d.extend_vocab and kind not in EXTENDABLE_KINDS:
        what = ("a char tokenizer (one token per character) cannot be extended by subwords" if kind == "char"
                else f"its {kind} tokenizer cannot be extended (only {', '.join(EXTENDABLE_KINDS)})")
        raise UserError(f"data.extend_vocab: train.init_from {source}: {what}; set data.extend_vocab=0")
    if saved.vocab_size < size:
        raise UserError(f"train.init_from {source}: the model has {saved.vocab_size} vocabulary rows but its "
                        f"tokenizer {size} tokens; broken checkpoint")



def grown_state(saved: dict[str, torch.Tensor], target: dict[str, torch.Tensor], pieces: dict[int, list[int]],
                source: Path) -> dict[str, Any]:
    """The checkpoint's tensors shaped for the new model: vocabulary-sized tensors (the word embedding,
    the decoder bias) keep their old rows; each new token's row is the mean of its old pieces' rows, and
    rows no token uses keep the new model's initialisation."""
    state: dict[str, Any] = {}
    for key, own in target.items():
        if key not in saved:
            raise UserError(f"train.init_from {source}: the weights have no {key}; broken checkpoint")
        old = saved[key]
        if old.shape == own.shape:
            state[key] = old
            continue
        if old.dim() == 0 or old.shape[1:] != own.shape[1:] or old.shape[0] > own.shape[0]:
            raise UserError(f"train.init_from {source}: {key} has shape {tuple(old.shape)}, the model "
                            f"{tuple(own.shape)}; broken checkpoint")
        grown = own.detach().clone().to(old.dtype)
        grown[: old.shape[0]] = old
        for new_id, old_ids in pieces.items():
            if old_ids and new_id < grown.shape[0]:
                grown[new_id] = old[old_ids].mean(dim=0)
        state[key] = grown
    return state
