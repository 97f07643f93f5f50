"""Fine-tuning on top of a pretrained encoder: the downstream test of a checkpoint.

    python -m mlm.finetune --config configs/finetune.yaml init_from=runs/base \
        data.train_file=train.jsonl data.validation_file=dev.jsonl data.test_file=test.jsonl \
        output_dir=runs/ft [task=token_classification | task=regression]

The fine-tuning library (layer 6, above `mlm.tasks`, `mlm.loop` and `mlm.checkpoint`, which it
composes): `config` (FinetuneConfig), `run` (setup → fit with early stopping, results.json),
`saved` (the fine-tuned checkpoint and `load_classifier`), `grid` (the task benchmark behind
`python -m mlm.benchmark`), `cli` (the command line). The names below are the public surface.

Outputs in `output_dir`: `results.json` and `checkpoints/step_<N>/`, a normal checkpoint (the
fine-tuned encoder with its unchanged MLM head: `load_pretrained`, fill-mask, export and the probe
accept it) plus `classifier.safetensors` and `classifier.json`, all covered by its manifest;
`load_classifier(output_dir)` rebuilds the model, `mlm.export_hf` exports it to transformers.
"""
from __future__ import annotations

from typing import Any, Sequence

from mlm.finetune.cli import main
from mlm.finetune.config import SCRATCH, FinetuneConfig, FinetuneDataConfig, FinetuneTrainConfig, HeadConfig
from mlm.finetune.run import BestState, build_encoder, finetune, fit, length_bucketed_batches, read_splits
from mlm.finetune.saved import (CLASSIFIER_INFO, CLASSIFIER_WEIGHTS, is_finetuned, load_classifier, predict_tags,
                                save_finetuned)
from mlm.tasks.encoding import encode_texts
from mlm.tasks.heads import SequenceClassifier, TokenClassifier
from mlm.tasks.kinds import Encoded, SequenceClassification, predict_split
from mlm.tasks.metrics import classification_metrics, entity_metrics, regression_metrics
from mlm.tasks.records import LabeledData, label_names, read_labeled
from mlm.tasks.tagged import read_tagged

__all__ = ["FinetuneConfig", "FinetuneDataConfig", "FinetuneTrainConfig", "HeadConfig", "SCRATCH", "finetune",
           "fit", "build_encoder", "read_splits", "BestState", "length_bucketed_batches", "load_classifier",
           "save_finetuned", "is_finetuned", "predict_tags", "CLASSIFIER_INFO", "CLASSIFIER_WEIGHTS", "predict", "predict_split",
           "tokenize", "classification_metrics", "entity_metrics", "regression_metrics", "label_names",
           "read_labeled", "read_tagged", "SequenceClassifier", "TokenClassifier", "main"]


def tokenize(tokenizer: Any, data: LabeledData, max_len: int) -> list[list[int]]:
    """Token ids with [CLS]/[SEP], truncated to max_len (the tokenizer passed in is not modified)."""
    return encode_texts(tokenizer, data.texts, data.pairs, max_len)


def predict(model: SequenceClassifier, rows: Sequence[Sequence[int]], pad_id: int, batch_size: int,
            device: Any, autocast: Any = None) -> list[int]:
    """Predicted label indices of a sequence classifier, in the order of `rows`."""
    split = Encoded(None, [list(r) for r in rows], [0] * len(rows))
    return predict_split(SequenceClassification(), model, split, pad_id, batch_size, device, autocast)
