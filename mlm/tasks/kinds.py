"""The task types fine-tuning knows, each as one object: how its files are read, encoded into rows,
batched, scored by a loss, predicted and measured.

Why one object per type: the fine-tuning run (`mlm.finetune`) is the same for all of them —
setup, `mlm.loop.train_step` with a loss function, evaluation, early stopping, saving — so
everything that differs between sequence classification, regression and token classification
sits here, behind the same methods, and a new task type is a new class (plus its head, reader and
metrics), not a new branch in the loop.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlm.errors import UserError
from mlm.model import MLMModel
from mlm.padding import RowGrid, pad_batch
from mlm.tasks.encoding import IGNORE, WordRows, encode_texts, encode_words, words_from_rows
from mlm.tasks.heads import SequenceClassifier, TokenClassifier, export_transform
from mlm.tasks.metrics import (classification_metrics, constant_regression, entity_metrics, lexical_tagging,
                               majority_accuracy, majority_tagging, regression_metrics)
from mlm.tasks.records import LabeledData, encode_labels, label_names, read_labeled
from mlm.tasks.tagged import TaggedData, encode_tags, read_tagged, tag_names

Batch = dict[str, Tensor]
TASK_TYPES = ("sequence_classification", "token_classification", "regression")


@dataclass
class Fields:
    """Which record fields hold the inputs and labels (the `data.*_field` settings)."""
    text: str = "text"
    pair: str = ""
    label: str = "label"
    tokens: str = "tokens"
    tags: str = "tags"


@dataclass
class Encoded:
    """One split ready for a model: token rows, one target per row (a label index, a float, or a label
    per token with IGNORE), and the split's examples as read (texts or sentences)."""
    data: Any
    rows: list[list[int]]
    targets: list[Any]
    words: WordRows | None = None
    examples: int = 0


@dataclass
class HeadSettings:
    """The head options of a fine-tuning config (`head.*`), resolved per encoder by the task."""
    pooling: str = "cls"
    dropout: float = 0.1
    transform: str = "auto"


@dataclass
class Task:
    """The behaviour shared by the task types; subclasses fill in what differs."""
    fields: Fields = field(default_factory=Fields)
    labels: list[str] = field(default_factory=list)
    name: ClassVar[str] = ""
    score_name: ClassVar[str] = ""  # the validation metric early stopping selects on
    lower_is_better: ClassVar[bool] = False
    metric_names: ClassVar[tuple[str, ...]] = ()

    # -- data
    def read(self, path: str) -> Any:
        raise NotImplementedError

    def set_labels(self, train: Any) -> None:
        """Take the label set from the training data."""

    def encode(self, tokenizer: Any, data: Any, max_len: int, stride: int) -> Encoded:
        raise NotImplementedError

    def subset(self, data: Any, indices: Sequence[int], suffix: str) -> Any:
        return data.subset(indices, suffix)

    def size(self, data: Any) -> int:
        return len(data.texts)

    # -- model
    def build(self, encoder: MLMModel, head: HeadSettings) -> nn.Module:
        raise NotImplementedError

    def batch(self, split: Encoded, idx: Sequence[int], pad_id: int) -> Batch:
        ids, mask = pad_batch([split.rows[i] for i in idx], pad_id)
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.as_tensor([split.targets[i] for i in idx])}

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        raise NotImplementedError

    def outputs(self, model: nn.Module, split: Encoded, idx: Sequence[int], ids: Tensor, mask: Tensor) -> list[Any]:
        """The prediction of each row of a batch (a label index, a float, or a label per predicted word)."""
        logits = model(ids, mask)  # (b, labels)
        return logits.argmax(-1).tolist()

    # -- measuring
    def metrics(self, split: Encoded, predictions: list[Any]) -> dict[str, float]:
        raise NotImplementedError

    def baselines(self, train: Encoded, test: Encoded) -> dict[str, float]:
        return {}

    def score(self, metrics: dict[str, float]) -> float:
        """The number early stopping maximises."""
        value = metrics[self.score_name]
        return -value if self.lower_is_better else value

    def info(self) -> dict[str, Any]:
        """What classifier.json records about the task (enough to rebuild and use the head)."""
        return {"task": self.name, "labels": list(self.labels)}


# ---------------------------------------------------------------- sequence tasks

def sequence_head(encoder: MLMModel, num_outputs: int, head: HeadSettings) -> SequenceClassifier:
    transform = export_transform(encoder) if head.transform == "auto" else head.transform
    return SequenceClassifier(encoder, num_outputs, head.pooling, head.dropout, transform)  # type: ignore[arg-type]


class SequenceClassification(Task):
    """One label per text (or text pair); cross-entropy; accuracy and macro-F1."""
    name = "sequence_classification"
    score_name = "accuracy"
    metric_names = ("accuracy", "macro_f1")

    def read(self, path: str) -> LabeledData:
        return read_labeled(path, self.fields.text, self.fields.label, self.fields.pair)

    def set_labels(self, train: LabeledData) -> None:
        self.labels = label_names(train.labels)
        if len(self.labels) < 2:
            raise UserError(f"{train.source}: only one label ({self.labels[0]!r}); classification needs at least two")

    def encode(self, tokenizer: Any, data: LabeledData, max_len: int, stride: int) -> Encoded:
        rows = encode_texts(tokenizer, data.texts, data.pairs, max_len)
        return Encoded(data, rows, encode_labels(data, self.labels), examples=len(rows))

    def build(self, encoder: MLMModel, head: HeadSettings) -> nn.Module:
        return sequence_head(encoder, len(self.labels), head)

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        return F.cross_entropy(model(batch["input_ids"], batch["attention_mask"]).float(), batch["labels"],
                               reduction="sum")

    def metrics(self, split: Encoded, predictions: list[Any]) -> dict[str, float]:
        return classification_metrics(predictions, split.targets, len(self.labels))

    def baselines(self, train: Encoded, test: Encoded) -> dict[str, float]:
        return {"majority_baseline_test_accuracy": majority_accuracy(train.targets, test.targets, len(self.labels))}


class Regression(Task):
    """One number per text (or text pair); squared error; Pearson, Spearman and MSE. Early stopping
    selects the lowest validation MSE: Pearson ignores scale and offset, so the best-correlated
    epoch can predict values far from the targets."""
    name = "regression"
    score_name = "mse"
    lower_is_better = True
    metric_names = ("pearson", "spearman", "mse")
    mean: float = 0.0

    def read(self, path: str) -> LabeledData:
        return read_labeled(path, self.fields.text, self.fields.label, self.fields.pair, numeric=True)

    def set_labels(self, train: LabeledData) -> None:
        self.labels, self.mean = [], float(np.mean(train.labels))

    def encode(self, tokenizer: Any, data: LabeledData, max_len: int, stride: int) -> Encoded:
        rows = encode_texts(tokenizer, data.texts, data.pairs, max_len)
        return Encoded(data, rows, [float(v) for v in data.labels], examples=len(rows))

    def build(self, encoder: MLMModel, head: HeadSettings) -> nn.Module:
        model = sequence_head(encoder, 1, head)
        with torch.no_grad():  # start at the training mean: the head then learns deviations from it
            model.classifier.bias.fill_(self.mean)
        return model

    def batch(self, split: Encoded, idx: Sequence[int], pad_id: int) -> Batch:
        batch = super().batch(split, idx, pad_id)
        batch["labels"] = batch["labels"].float()
        return batch

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        pred = model(batch["input_ids"], batch["attention_mask"])[:, 0].float()
        return ((pred - batch["labels"].float()) ** 2).sum()

    def outputs(self, model: nn.Module, split: Encoded, idx: Sequence[int], ids: Tensor, mask: Tensor) -> list[Any]:
        return model(ids, mask)[:, 0].float().tolist()

    def metrics(self, split: Encoded, predictions: list[Any]) -> dict[str, float]:
        return regression_metrics(predictions, split.targets)

    def baselines(self, train: Encoded, test: Encoded) -> dict[str, float]:
        return {"constant_baseline_test_mse": constant_regression(train.targets, test.targets)["mse"]}

    def info(self) -> dict[str, Any]:
        return {**super().info(), "labels": ["score"]}


# ---------------------------------------------------------------- token classification

class TokenClassification(Task):
    """One BIO tag per word; cross-entropy on each word's first sub-token; entity P/R/F1 (seqeval's
    default mode) and token accuracy over words."""
    name = "token_classification"
    score_name = "entity_f1"
    metric_names = ("entity_f1", "entity_precision", "entity_recall", "token_accuracy")

    def read(self, path: str) -> TaggedData:
        return read_tagged(path, self.fields.tokens, self.fields.tags)

    def set_labels(self, train: TaggedData) -> None:
        self.labels = tag_names(train)
        if len(self.labels) < 2:
            raise UserError(f"{train.source}: no entity tags (only O); token classification needs B-/I- tags")

    def size(self, data: TaggedData) -> int:
        return len(data.words)

    def encode(self, tokenizer: Any, data: TaggedData, max_len: int, stride: int) -> Encoded:
        return self.encode_sentences(tokenizer, data.words, encode_tags(data, self.labels), max_len, stride, data)

    def encode_sentences(self, tokenizer: Any, sentences: Sequence[Sequence[str]], tags: Any, max_len: int,
                         stride: int, data: TaggedData | None = None) -> Encoded:
        """Word lists as windowed model rows; `tags` None for sentences to predict (no labels)."""
        words = encode_words(tokenizer, sentences, tags, max_len, stride)
        return Encoded(data, words.rows, words.labels, words, examples=len(sentences))

    def build(self, encoder: MLMModel, head: HeadSettings) -> nn.Module:
        return TokenClassifier(encoder, len(self.labels), head.dropout)

    def batch(self, split: Encoded, idx: Sequence[int], pad_id: int) -> Batch:
        rows = [split.rows[i] for i in idx]
        ids, mask = pad_batch(rows, pad_id)
        labels = RowGrid([len(r) for r in rows]).pad("labels", [split.targets[i] for i in idx], np.int64, IGNORE)
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.from_numpy(labels)}

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        labelled = batch["labels"] != IGNORE
        logits = model(batch["input_ids"], batch["attention_mask"], labelled)  # (m, labels)
        return F.cross_entropy(logits.float(), batch["labels"][labelled], reduction="sum")

    def outputs(self, model: nn.Module, split: Encoded, idx: Sequence[int], ids: Tensor, mask: Tensor) -> list[Any]:
        assert split.words is not None
        positions = torch.zeros(ids.shape, dtype=torch.bool)
        for b, r in enumerate(idx):
            positions[b, split.words.positions[r]] = True
        best = model(ids, mask, positions.to(ids.device)).argmax(-1).tolist()  # row-major: rows in order
        out, start = [], 0
        for r in idx:
            n = len(split.words.positions[r])
            out.append(best[start:start + n])
            start += n
        return out

    def tags_of(self, split: Encoded, predictions: list[Any]) -> list[list[str]]:
        """One predicted tag per word of every sentence of the split."""
        assert split.words is not None
        per_word = words_from_rows(split.words, predictions, fill=self.labels.index("O"))
        return [[self.labels[i] for i in sentence] for sentence in per_word]

    def metrics(self, split: Encoded, predictions: list[Any]) -> dict[str, float]:
        m = entity_metrics(split.data.tags, self.tags_of(split, predictions))
        return {k: m[k] for k in self.metric_names}

    def baselines(self, train: Encoded, test: Encoded) -> dict[str, float]:
        majority = majority_tagging(train.data.tags, test.data.tags)
        lexical = lexical_tagging(train.data.words, train.data.tags, test.data.words, test.data.tags)
        return {"majority_baseline_test_entity_f1": majority["entity_f1"],
                "majority_baseline_test_token_accuracy": majority["token_accuracy"],
                "lexical_baseline_test_entity_f1": lexical["entity_f1"],
                "lexical_baseline_test_token_accuracy": lexical["token_accuracy"],
                "num_test_entities": majority["gold_entities"]}


TASKS: dict[str, Callable[[], Task]] = {"sequence_classification": SequenceClassification,
                                        "token_classification": TokenClassification, "regression": Regression}


def make_task(name: str, fields: Fields, labels: Sequence[str] = ()) -> Task:
    """A task object by type name, with its fields (and a known label set, when reloading)."""
    task = TASKS[name]()
    task.fields, task.labels = fields, list(labels)
    return task


@torch.no_grad()
def predict_split(task: Task, model: nn.Module, split: Encoded, pad_id: int, batch_size: int,
                  device: torch.device, autocast: Any = None) -> list[Any]:
    """The task's prediction for every row of `split`, in row order (batched by length for speed)."""
    was_training = model.training
    model.eval()
    order = np.argsort([len(r) for r in split.rows], kind="stable")
    out: list[Any] = [None] * len(split.rows)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size].tolist()
        ids, mask = pad_batch([split.rows[i] for i in idx], pad_id)
        with autocast() if autocast is not None else contextlib.nullcontext():
            predicted = task.outputs(model, split, idx, ids.to(device), mask.to(device))
        for i, p in zip(idx, predicted):
            out[i] = p
    model.train(was_training)
    return out
