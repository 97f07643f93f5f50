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

TokenizerType = Literal["metaspace_bpe", "wordpiece", "bpe", "unigram", "char", "byte_bpe"]


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
    txt_documents: Literal["line", "paragraph", "file"] = "line"
    """What one document of a text file is: a line, a blank-line separated paragraph, or the whole file
    (source code and other files whose lines are not documents)."""
    extensions: list[str] = field(default_factory=list)
    """Extensions a directory or glob in train_files contributes, e.g. [.py]; empty: those of the known
    formats (.txt .jsonl .json .parquet .fasta .fa ..., see README), compressed or not. A file
    named explicitly is always read."""
    strip_whitespace: bool = True
    """Strip each document's leading and trailing whitespace; false keeps every document exactly as
    written (source code with byte_bpe: indentation, blank lines and the final newline stay)."""
    fasta_header: Literal["drop", "keep"] = "drop"
    """FASTA: a record's document is its sequence (drop), or its ">header" line, a newline and the
    sequence (keep)."""
    fasta_uppercase: bool = True
    """FASTA: upper-case the residues (lower case often only marks soft-masked or inserted regions);
    false keeps the case."""
    tokenizer: str = ""
    """A tokenizer.json to use; empty: train one on the corpus."""
    tokenizer_type: TokenizerType = "metaspace_bpe"
    """metaspace_bpe: BPE with a word-start marker, the same file in every process (deterministic);
    char: one token per character (proteins, DNA); byte_bpe: byte-level BPE that keeps every space, tab
    and newline (source code); both deterministic. wordpiece, bpe (## continuations) and unigram are
    not deterministic across processes (huggingface/tokenizers#1794)."""
    extend_vocab: int = 0
    """With train.init_from: add up to this many tokens learned from this corpus (the words the
    checkpoint's tokenizer splits most often); old ids are kept. 0: the checkpoint's tokenizer as is."""
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
        require_nonnegative(self, "data", "extend_vocab")
        require_literals(self, "data")
        bad = next((e for e in self.extensions if not str(e).strip(". ") or "/" in str(e)), None)
        if bad is not None:
            raise ConfigError(f"data.extensions: {bad!r} is not a file extension (write them like .py)")
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
class MaskSchedule:
    """Masking rates as a pure function of training progress (step / max_steps, or the share of
    train.budget_minutes spent): e.g. mmBERT's 30% -> 15% -> 5%, or Wettig et al.'s high early rate.
    The rates in `collate` are the start values."""

    kind: Literal["constant", "linear", "cosine", "steps"] = "constant"
    mlm_probability_end: float | None = None
    """linear/cosine: mlm_probability at the end of training; None: no change."""
    mask_replace_prob_end: float | None = None
    random_replace_prob_end: float | None = None
    steps: list[list[float]] = field(default_factory=list)
    """kind=steps: rows [from_fraction, mlm_probability], e.g. [[0, 0.3], [0.5, 0.15], [0.9, 0.05]]."""

    def validate(self) -> None:
        require_literals(self, "collate.schedule")
        for name in ("mlm_probability_end", "mask_replace_prob_end", "random_replace_prob_end"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ConfigError(f"collate.schedule.{name} must be between 0 and 1, got {value}")
        if self.kind == "steps" and not self.steps:
            raise ConfigError("collate.schedule.kind=steps needs collate.schedule.steps, rows "
                              "[from_fraction, mlm_probability], e.g. [[0, 0.3], [0.5, 0.15]]")
        for row in self.steps:
            if len(row) != 2 or not 0.0 <= row[0] <= 1.0 or not 0.0 <= row[1] <= 1.0:
                raise ConfigError(f"collate.schedule.steps: each row is [from_fraction, mlm_probability], "
                                  f"both in [0, 1]; got {row}")


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
    schedule: MaskSchedule = field(default_factory=MaskSchedule)
    """How the rates above change over training (default: constant)."""

    def validate(self) -> None:
        require_literals(self, "collate")
        require_unit(self, "collate", "mlm_probability", "mask_replace_prob", "random_replace_prob")
        if self.exact_count and self.strategy not in ("token", "weighted"):
            raise ConfigError(f"collate.exact_count=true works with strategy token or weighted, "
                              f"not {self.strategy!r}")
        for mask, rand, where in ((self.mask_replace_prob, self.random_replace_prob, ""),
                                  (self.schedule.mask_replace_prob_end, self.schedule.random_replace_prob_end,
                                   " at the end of collate.schedule")):
            mask = self.mask_replace_prob if mask is None else mask
            rand = self.random_replace_prob if rand is None else rand
            if mask + rand > 1.0:
                raise ConfigError(f"collate.mask_replace_prob + collate.random_replace_prob must be at most 1{where}, "
                                  f"got {mask} + {rand}")
        self.schedule.validate()


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
    budget_minutes: float = 0.0
    """A time budget instead of a step count: warmup and decay follow the share of the budget spent
    (wall time of the loop, resumed sessions included), so the run ends annealed whatever the
    machine's speed. train.max_steps still caps the run. 0: off (the schedule follows the step)."""
    warmup_fraction: float = 0.05
    """With budget_minutes: the share of the budget spent warming up (warmup_steps counts steps)."""
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
    init_from: str = ""
    """Continued pretraining: start from this checkpoint (or a run's newest) with its weights, architecture
    and tokenizer, a fresh optimizer and schedule. A run with checkpoints of its own resumes from them."""

    def validate(self) -> None:
        require_positive(self, "train", "max_steps", "batch_size", "log_every", "max_bad_steps")
        require_nonnegative(self, "train", "micro_batch_size", "warmup_steps", "weight_decay", "grad_clip",
                            "max_time", "num_threads")
        require_literals(self, "train")
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be positive, got {self.lr}")
        require_unit(self, "train", "min_lr_ratio")
        require_nonnegative(self, "train", "budget_minutes")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ConfigError(f"train.warmup_fraction must be in [0, 1), got {self.warmup_fraction}")


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
    mlm_probability: float | None = None
    """Masking rate of the evaluation; None: the rate training ends on (the end of collate.schedule).
    Set it (e.g. 0.15) to compare runs trained at different rates."""

    def validate(self) -> None:
        require_nonnegative(self, "eval", "every", "batches")
        if self.mlm_probability is not None and not 0.0 < self.mlm_probability <= 1.0:
            raise ConfigError(f"eval.mlm_probability must be in (0, 1], got {self.mlm_probability}")
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
