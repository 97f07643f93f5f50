"""The pretraining run's config: one dataclass per section, read from YAML with `key.sub=value` overrides.

    cfg = load_config("configs/base.yaml", ["train.lr=3e-4"])

Every field has a docstring and every choice is a `Literal`; `mlm.schema` does the reading and
the type checks, each section's `validate()` the range checks. The model section is
`mlm.model.ModelConfig`, kept beside the model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

from mlm.model.config import ModelConfig
from mlm.schema import (ConfigError, from_dict, load_config as load_typed_config, require_literals,
                        require_nonnegative, require_positive, require_unit, to_dict, to_yaml, validate_sections)

__all__ = ["Config", "ModelConfig", "DataConfig", "CollateConfig", "TrainConfig", "EvalConfig", "CheckpointConfig",
           "LogConfig", "ConfigError", "load_config", "save_config", "config_to_dict", "from_dict"]

TokenizerType = Literal["metaspace_bpe", "wordpiece", "bpe", "unigram"]


@dataclass
class DataConfig:
    """Where the text comes from and how it becomes blocks of token ids (`mlm.data`)."""

    train_files: list[str] = field(default_factory=list)
    """Files, directories or globs; empty (and no hf_dataset): the stdlib-docstring corpus."""
    hf_dataset: str = ""
    """A Hugging Face dataset name or a folder written by `save_to_disk` (needs `datasets`)."""
    hf_config: str = ""
    hf_split: str = "train"
    text_field: str = "text"
    """Field of .jsonl/.json records, parquet column or dataset column holding the text."""
    txt_documents: Literal["line", "paragraph"] = "line"
    """What one document of a text file is: a line, or a blank-line separated paragraph."""
    tokenizer: str = ""
    """A tokenizer.json to use; empty: train one on the corpus."""
    tokenizer_type: TokenizerType = "metaspace_bpe"
    """metaspace_bpe: BPE with a word-start marker, the same file in every process (deterministic);
    wordpiece, bpe (## continuations) and unigram are not deterministic across processes
    (huggingface/tokenizers#1794)."""
    vocab_size: int = 8192
    tokenizer_sample_bytes: int = 100_000_000
    """At most this much training-split text is sampled (evenly, by document hash) to train the tokenizer."""
    seq_len: int = 128
    """Tokens per block, [CLS] included."""
    validation_fraction: float = 0.02
    """Share of documents (chosen by a hash of their text) held out for validation."""
    min_chars: int = 1
    """Documents shorter than this (after stripping) are skipped and counted."""
    cache_dir: str = ""
    """Where corpus, tokenizers and shards are cached; empty: <output_dir>/data."""
    num_proc: int = 0
    """Tokenizer threads; 0: all cores."""
    shard_blocks: int = 65536
    """Blocks per shard file."""
    max_chunk_chars: int = 100_000
    """Longer lines/documents are read and tokenized in pieces of this size."""
    max_record_chars: int = 64_000_000
    """A JSON line longer than this is skipped (counted), never loaded."""

    def validate(self) -> None:
        require_positive(self, "data", "vocab_size", "seq_len", "shard_blocks", "tokenizer_sample_bytes",
                         "max_chunk_chars", "max_record_chars")
        require_literals(self, "data")
        if self.max_chunk_chars < 1000:
            raise ConfigError(f"data.max_chunk_chars must be at least 1000, got {self.max_chunk_chars}")
        if self.min_chars > self.max_chunk_chars:
            raise ConfigError(f"data.min_chars ({self.min_chars}) must not exceed "
                              f"data.max_chunk_chars ({self.max_chunk_chars})")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ConfigError(f"data.validation_fraction must be in [0, 1), got {self.validation_fraction}")
        if self.seq_len < 8:
            raise ConfigError(f"data.seq_len must be at least 8, got {self.seq_len}")


@dataclass
class CollateConfig:
    """Masking (`mlm.collate.MLMCollator`)."""

    strategy: Literal["token", "whole_word", "span", "weighted"] = "token"
    mlm_probability: float = 0.15
    """Share of eligible tokens selected for prediction."""
    mask_replace_prob: float = 0.8
    """Of the selected tokens, the share replaced by [MASK]."""
    random_replace_prob: float = 0.1
    """Of the selected tokens, the share replaced by a random non-special token (the rest stay)."""
    exact_count: bool = False
    """Select exactly round(p * eligible) tokens per row (token and weighted strategies)."""

    def validate(self) -> None:
        require_literals(self, "collate")
        require_unit(self, "collate", "mlm_probability", "mask_replace_prob", "random_replace_prob")
        if self.exact_count and self.strategy not in ("token", "weighted"):
            raise ConfigError(f"collate.exact_count=true works with strategy token or weighted, "
                              f"not {self.strategy!r}")
        if self.mask_replace_prob + self.random_replace_prob > 1.0:
            raise ConfigError("collate.mask_replace_prob + collate.random_replace_prob must be at most 1, got "
                              f"{self.mask_replace_prob} + {self.random_replace_prob}")


@dataclass
class TrainConfig:
    """The optimizer, its schedule and the loop (`mlm.train`, `mlm.optim`, `mlm.runtime`)."""

    max_steps: int = 1000
    batch_size: int = 32
    """Global batch: micro_batch_size x accumulation x world size."""
    micro_batch_size: int = 0
    """Rows per forward/backward; 0: batch_size / world size (no accumulation)."""
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    """The schedule decays to lr * min_lr_ratio."""
    warmup_steps: int = 100
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    weight_decay: float = 0.01
    """AdamW decay on matrices; biases, norms and other vectors get none."""
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    grad_clip: float = 1.0
    """Clip the global gradient norm to this; 0: no clipping."""
    seed: int = 0
    """Model init, data order and masks."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """auto: bf16 autocast on CUDA and on CPUs with AVX512-BF16/AMX, else fp32."""
    compile: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: int = 0
    """CPU threads; 0: torch's default."""
    max_time: float = 0.0
    """Seconds; stop cleanly with a checkpoint when reached. 0: no limit."""
    max_bad_steps: int = 10
    """Consecutive non-finite steps before giving up."""
    log_every: int = 10
    deterministic: bool = False
    """torch.use_deterministic_algorithms: bit-exact resume on CPU."""
    fsdp: bool = False
    """Under torchrun: FSDP2 fully_shard per block instead of DDP."""

    def validate(self) -> None:
        require_positive(self, "train", "max_steps", "batch_size", "log_every", "max_bad_steps")
        require_nonnegative(self, "train", "micro_batch_size", "warmup_steps", "weight_decay", "grad_clip",
                            "max_time", "num_threads")
        require_literals(self, "train")
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be positive, got {self.lr}")
        require_unit(self, "train", "min_lr_ratio")


@dataclass
class EvalConfig:
    """Validation during training."""

    every: int = 200
    """Steps between evaluations; 0: only at the end."""
    batches: int = 50
    """Validation batches per evaluation; 0: the whole split."""
    batch_size: int = 64
    seed: int = 1234
    """Fixed masking seed, so evaluations are comparable."""

    def validate(self) -> None:
        require_nonnegative(self, "eval", "every", "batches")
        require_positive(self, "eval", "batch_size")


@dataclass
class CheckpointConfig:
    """When checkpoints are written and how many are kept (`mlm.checkpoint`)."""

    every: int = 500
    """Steps between checkpoints; 0: only at the end."""
    keep: int = 3
    """Newest verified checkpoints kept; 0: all. A checkpoint that fails verification is never deleted."""
    reject_unverified: bool = False
    """When checkpoints exist and none verifies, the run stops (nothing is changed); true moves them
    into checkpoints/rejected/ and starts from step 0."""

    def validate(self) -> None:
        require_nonnegative(self, "checkpoint", "every", "keep")


@dataclass
class LogConfig:
    """What the run reports while it goes."""

    tensorboard: bool = False
    """Write TensorBoard events (if tensorboard is installed)."""
    progress: bool = True
    """A tqdm bar on a terminal."""

    def validate(self) -> None:
        pass


@dataclass
class Config:
    """One pretraining run: `python -m mlm.train --config <yaml> [key.sub=value ...]`."""

    output_dir: str = "runs/base"
    """Run folder; re-running with the same folder resumes."""
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
        validate_sections(self)
        if self.model.max_seq_len < self.data.seq_len:
            raise ConfigError(f"model.max_seq_len ({self.model.max_seq_len}) must be at least "
                              f"data.seq_len ({self.data.seq_len})")


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (), cls: type = Config) -> Any:
    """Read YAML (if given), apply `key.sub=value` overrides, check types and values."""
    return load_typed_config(path, overrides, cls)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return to_dict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(to_yaml(cfg), encoding="utf-8")
