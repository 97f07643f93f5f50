"""Typed run configuration: dataclasses, loaded from YAML, overridable as `train.lr=3e-4`.

Every entry point reads a `Config`. Mistakes are caught here, at the boundary, with the
offending key named (and the nearest valid key suggested for a typo), so the rest of the
code can trust the values it is given. Of ours it imports only the `UserError` base.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from mlm.errors import UserError


class ConfigError(UserError):
    """A config mistake; the message names the key (or file) and what is wrong."""


@dataclass
class ModelConfig:
    vocab_size: int = 0  # 0: taken from the tokenizer
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 1024
    max_seq_len: int = 128
    position: str = "learned"  # learned | rotary
    norm: str = "pre"  # pre | post
    activation: str = "gelu"  # gelu | geglu
    bias: bool = True
    dropout: float = 0.0
    attention_dropout: float = 0.0
    layer_norm_eps: float = 1e-12
    init_std: float = 0.02
    # std / sqrt(2 * num_layers) for the projections into the residual stream (GPT-2).
    # Off by default: at 4 layers it raised the loss after 200 steps by 0.12 (BENCHMARKS.md).
    scaled_residual_init: bool = False
    rope_theta: float = 10000.0
    pad_token_id: int = 0
    special_token_ids: list[int] = field(default_factory=list)  # filled from the tokenizer

    def validate(self) -> None:
        _positive(self, "model", "hidden_size", "num_layers", "num_heads", "intermediate_size", "max_seq_len")
        _choice(self, "model", "position", ("learned", "rotary"))
        _choice(self, "model", "norm", ("pre", "post"))
        _choice(self, "model", "activation", ("gelu", "geglu"))
        _unit(self, "model", "dropout", "attention_dropout")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"model.hidden_size ({self.hidden_size}) must be divisible by "
                              f"model.num_heads ({self.num_heads})")
        if self.position == "rotary" and (self.hidden_size // self.num_heads) % 2:
            raise ConfigError("model.position=rotary needs an even head size (hidden_size / num_heads)")


@dataclass
class DataConfig:
    train_files: list[str] = field(default_factory=list)  # files, directories or globs; empty: stdlib corpus
    hf_dataset: str = ""  # a Hugging Face dataset name or a saved `datasets` folder (needs `datasets`)
    hf_config: str = ""
    hf_split: str = "train"
    text_field: str = "text"  # for .jsonl/.json/.parquet/datasets
    txt_documents: str = "line"  # line | paragraph (blank-line separated)
    tokenizer: str = ""  # path to tokenizer.json; empty: train one
    tokenizer_type: str = "wordpiece"  # wordpiece | bpe | unigram
    vocab_size: int = 8192
    tokenizer_sample_bytes: int = 100_000_000
    seq_len: int = 128
    validation_fraction: float = 0.02
    min_chars: int = 1  # documents shorter than this (after stripping) are skipped and counted
    cache_dir: str = ""  # empty: <output_dir>/data
    num_proc: int = 0  # tokenizer threads; 0: all cores
    shard_blocks: int = 65536  # blocks per shard file
    max_chunk_chars: int = 100_000  # longer lines/documents are read and tokenized in pieces of this size
    max_record_chars: int = 64_000_000  # a JSON line longer than this is skipped (counted), never loaded

    def validate(self) -> None:
        _positive(self, "data", "vocab_size", "seq_len", "shard_blocks", "tokenizer_sample_bytes")
        _positive(self, "data", "max_chunk_chars", "max_record_chars")
        if self.max_chunk_chars < 1000:
            raise ConfigError(f"data.max_chunk_chars must be at least 1000, got {self.max_chunk_chars}")
        if self.min_chars > self.max_chunk_chars:
            raise ConfigError(f"data.min_chars ({self.min_chars}) must not exceed "
                              f"data.max_chunk_chars ({self.max_chunk_chars})")
        _choice(self, "data", "txt_documents", ("line", "paragraph"))
        _choice(self, "data", "tokenizer_type", ("wordpiece", "bpe", "unigram"))
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ConfigError(f"data.validation_fraction must be in [0, 1), got {self.validation_fraction}")
        if self.seq_len < 8:
            raise ConfigError(f"data.seq_len must be at least 8, got {self.seq_len}")


@dataclass
class CollateConfig:
    strategy: str = "token"  # token | whole_word | span | weighted
    mlm_probability: float = 0.15
    mask_replace_prob: float = 0.8
    random_replace_prob: float = 0.1
    exact_count: bool = False

    def validate(self) -> None:
        _choice(self, "collate", "strategy", ("token", "whole_word", "span", "weighted"))
        _unit(self, "collate", "mlm_probability", "mask_replace_prob", "random_replace_prob")
        if self.exact_count and self.strategy not in ("token", "weighted"):
            raise ConfigError(f"collate.exact_count=true works with strategy token or weighted, "
                              f"not {self.strategy!r}")
        if self.mask_replace_prob + self.random_replace_prob > 1.0:
            raise ConfigError("collate.mask_replace_prob + collate.random_replace_prob must be at most 1, got "
                              f"{self.mask_replace_prob} + {self.random_replace_prob}")


@dataclass
class TrainConfig:
    max_steps: int = 1000
    batch_size: int = 32  # global: micro_batch_size x accumulation x world size
    micro_batch_size: int = 0  # 0: batch_size / world size (no accumulation)
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    schedule: str = "cosine"  # cosine | linear | constant
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    grad_clip: float = 1.0
    seed: int = 0
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    compile: bool = False
    device: str = "auto"  # auto | cpu | cuda
    num_threads: int = 0  # CPU threads; 0: torch's default
    max_time: float = 0.0  # seconds; 0: no limit. Stops cleanly with a checkpoint.
    max_bad_steps: int = 10  # consecutive non-finite steps before giving up
    log_every: int = 10
    deterministic: bool = False
    fsdp: bool = False

    def validate(self) -> None:
        _positive(self, "train", "max_steps", "batch_size", "log_every", "max_bad_steps")
        _nonnegative(self, "train", "micro_batch_size", "warmup_steps", "weight_decay", "grad_clip",
                     "max_time", "num_threads")
        _choice(self, "train", "schedule", ("cosine", "linear", "constant"))
        _choice(self, "train", "precision", ("auto", "fp32", "bf16", "fp16"))
        _choice(self, "train", "device", ("auto", "cpu", "cuda"))
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be positive, got {self.lr}")
        _unit(self, "train", "min_lr_ratio")


@dataclass
class EvalConfig:
    every: int = 200  # steps; 0: only at the end
    batches: int = 50  # validation batches per evaluation; 0: the whole split
    batch_size: int = 64
    seed: int = 1234  # fixed masking seed so evaluations are comparable

    def validate(self) -> None:
        _nonnegative(self, "eval", "every", "batches")
        _positive(self, "eval", "batch_size")


@dataclass
class CheckpointConfig:
    every: int = 500  # steps; 0: only at the end
    keep: int = 3  # newest checkpoints kept; 0: all

    def validate(self) -> None:
        _nonnegative(self, "checkpoint", "every", "keep")


@dataclass
class LogConfig:
    tensorboard: bool = False
    progress: bool = True  # tqdm bar

    def validate(self) -> None:
        pass


@dataclass
class Config:
    output_dir: str = "runs/base"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    collate: CollateConfig = field(default_factory=CollateConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def validate(self) -> None:
        if not self.output_dir:
            raise ConfigError("output_dir must be set")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                value.validate()
        if self.model.max_seq_len < self.data.seq_len:
            raise ConfigError(f"model.max_seq_len ({self.model.max_seq_len}) must be at least "
                              f"data.seq_len ({self.data.seq_len})")


# ---------------------------------------------------------------- loading

def load_config(path: str | Path | None = None, overrides: Sequence[str] = (), cls: type = Config) -> Any:
    """Read YAML (if given), apply `key.sub=value` overrides, check types and values."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{path}: invalid YAML{where}: {getattr(err, 'problem', err)}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not a UTF-8 text file") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping of keys, got {type(loaded).__name__}")
        raw = loaded
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        _set_path(raw, key.strip().split("."), value)
    cfg = _build(cls, raw, prefix="")
    if hasattr(cfg, "validate"):
        cfg.validate()
    return cfg


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), encoding="utf-8")


def _set_path(tree: dict[str, Any], keys: list[str], value: Any) -> None:
    node = tree
    for k in keys[:-1]:
        child = node.get(k)
        if not isinstance(child, dict):
            child = {}
            node[k] = child
        node = child
    node[keys[-1]] = value


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        full = f"{prefix}{key}"
        if key not in names:
            valid = [f"{prefix}{n}" for n in names]
            close = difflib.get_close_matches(full, valid, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else f"; valid keys here: {', '.join(valid)}"
            raise ConfigError(f"unknown config key {full}{hint}")
        kwargs[key] = _coerce(hints[key], value, full)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return _build(tp, value if value is not None else {}, prefix=f"{key}.")
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, key)
    if origin is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return [_coerce(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                as_float = float(value)  # "1e4", "2_000"
                if as_float.is_integer():
                    return int(as_float)
            except ValueError:
                pass
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads "3e-4" as a string
            except ValueError:
                pass
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        if value is None:
            return ""
        raise ConfigError(f"{key} must be a string, got {value!r}")
    return value


def _positive(obj: Any, section: str, *names: str) -> None:
    for n in names:
        if getattr(obj, n) <= 0:
            raise ConfigError(f"{section}.{n} must be positive, got {getattr(obj, n)}")


def _nonnegative(obj: Any, section: str, *names: str) -> None:
    for n in names:
        if getattr(obj, n) < 0:
            raise ConfigError(f"{section}.{n} must be zero or positive, got {getattr(obj, n)}")


def _unit(obj: Any, section: str, *names: str) -> None:
    for n in names:
        v = getattr(obj, n)
        if not 0.0 <= v <= 1.0:
            raise ConfigError(f"{section}.{n} must be between 0 and 1, got {v}")


def _choice(obj: Any, section: str, name: str, choices: tuple[str, ...]) -> None:
    v = getattr(obj, name)
    if v not in choices:
        raise ConfigError(f"{section}.{name} must be one of {', '.join(choices)}; got {v!r}")
