"""The fine-tuning config: `python -m mlm.finetune --config <yaml> [key.sub=value ...]`.

One dataclass per section, a docstring per field; range checks in `validate()` (the types are
checked by `mlm.schema` when the YAML is read). `task` picks the task type; its default keeps
configs written before token classification and regression working unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mlm.model import ModelConfig
from mlm.schema import ConfigError, require_literals, require_nonnegative, require_positive
from mlm.tasks.kinds import TASKS, Fields, HeadSettings

SCRATCH = "scratch"
TaskType = Literal["sequence_classification", "token_classification", "regression"]


@dataclass
class FinetuneDataConfig:
    """The labelled files and their fields."""

    train_file: str = ""
    """Sequence tasks: .jsonl (one object per line), .json (a list), .csv or .tsv (header row).
    Token classification: .jsonl/.json with tokens and tags, or a CoNLL-style column file."""
    validation_file: str = ""
    """Empty: hold out validation_fraction of the training file."""
    test_file: str = ""
    """Empty: no test metrics."""
    text_field: str = "text"
    text_pair_field: str = ""
    """Optional second segment: [CLS] text [SEP] pair [SEP] (sequence classification, regression)."""
    label_field: str = "label"
    """Class names or integers (classification); numbers (regression)."""
    tokens_field: str = "tokens"
    """Token classification, JSON records: the list of words."""
    tags_field: str = "tags"
    """Token classification, JSON records: one BIO tag per word (O, B-<type>, I-<type>)."""
    max_seq_len: int = 0
    """Tokens per row; 0: the model's max_seq_len. Sequence tasks truncate longer texts; token
    classification cuts long sentences into windows instead."""
    stride: int = 32
    """Token classification: tokens of context kept on each side of a window of a long sentence
    (capped at a quarter of the window); every word is predicted once."""
    validation_fraction: float = 0.1

    def validate(self) -> None:
        if not self.train_file:
            raise ConfigError("data.train_file must be set (a .jsonl, .csv, .tsv or CoNLL file)")
        require_nonnegative(self, "data", "max_seq_len", "stride")
        if self.max_seq_len and self.max_seq_len < 3:
            raise ConfigError(f"data.max_seq_len must be 0 or at least 3 ([CLS], a token, [SEP]); got {self.max_seq_len}")
        if not self.validation_file and not 0.0 < self.validation_fraction < 1.0:
            raise ConfigError("data.validation_file is not set, so data.validation_fraction must be in (0, 1) "
                              f"to hold out a validation split; got {self.validation_fraction}")
        for name in ("text_field", "label_field", "tokens_field", "tags_field"):
            if not getattr(self, name):
                raise ConfigError(f"data.{name} must not be empty")

    def fields(self) -> Fields:
        return Fields(self.text_field, self.text_pair_field, self.label_field, self.tokens_field, self.tags_field)


@dataclass
class HeadConfig:
    """The task head on the encoder."""

    pooling: Literal["cls", "mean"] = "cls"
    """Sequence tasks: the first token's state ([CLS]), or the mean over real tokens (not exportable)."""
    transform: Literal["auto", "tanh", "gelu", "none"] = "auto"
    """Sequence tasks: dense + activation before the classifier, as transformers' sequence heads;
    auto: tanh (BERT / RoBERTa exports), gelu for rotary encoders (RoFormer export); none: dropout ->
    linear only (not exportable)."""
    dropout: float = 0.1

    def validate(self) -> None:
        require_literals(self, "head")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"head.dropout must be in [0, 1), got {self.dropout}")

    def settings(self) -> HeadSettings:
        return HeadSettings(self.pooling, self.dropout, self.transform)


@dataclass
class FinetuneTrainConfig:
    """The fine-tuning loop."""

    epochs: int = 10
    batch_size: int = 32
    eval_batch_size: int = 64
    lr: float = 3e-4
    """Right for small encoders (hidden 256); BERT-base-sized ones want 2e-5 to 1e-4."""
    warmup_ratio: float = 0.1
    """Of all steps."""
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    eval_every: int = 0
    """Steps between validation evaluations; 0: once per epoch."""
    patience: int = 3
    """Evaluations without a better validation score (accuracy, entity F1 or Pearson) before
    stopping; 0: never stop early."""
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    num_threads: int = 0

    def validate(self) -> None:
        require_positive(self, "train", "epochs", "batch_size", "eval_batch_size")
        require_nonnegative(self, "train", "weight_decay", "grad_clip", "eval_every", "patience", "num_threads")
        require_literals(self, "train")
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be positive, got {self.lr}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"train.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")


@dataclass
class FinetuneConfig:
    """One fine-tuning run: `python -m mlm.finetune --config <yaml> [key.sub=value ...]`."""

    output_dir: str = "runs/finetune"
    task: TaskType = "sequence_classification"
    """sequence_classification, token_classification (BIO tags per word) or regression (a number per text)."""
    init_from: str = ""
    """Checkpoint folder or run output_dir; "scratch": random weights."""
    architecture_from: str = ""
    """With init_from=scratch: copy this checkpoint's model config and tokenizer."""
    tokenizer: str = ""
    """With init_from=scratch: a tokenizer.json (overrides architecture_from's)."""
    save_checkpoint: bool = True
    data: FinetuneDataConfig = field(default_factory=FinetuneDataConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    train: FinetuneTrainConfig = field(default_factory=FinetuneTrainConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    """The architecture for init_from=scratch without architecture_from."""

    def validate(self) -> None:
        if not self.output_dir:
            raise ConfigError("output_dir must be set")
        if self.task not in TASKS:
            raise ConfigError(f"task must be one of {', '.join(TASKS)}; got {self.task!r}")
        if not self.init_from:
            raise ConfigError("init_from must be set: a checkpoint folder, a run's output_dir, or 'scratch'")
        if self.init_from == SCRATCH and not (self.architecture_from or self.tokenizer):
            raise ConfigError("init_from=scratch needs architecture_from=<checkpoint> (same architecture and "
                              "tokenizer as a pretrained model) or tokenizer=<tokenizer.json> (with the model: section)")
        if self.init_from != SCRATCH and self.architecture_from:
            raise ConfigError("architecture_from is only used with init_from=scratch")
        self.data.validate()
        self.head.validate()
        self.train.validate()
        if self.init_from == SCRATCH and not self.architecture_from:
            self.model.validate()
