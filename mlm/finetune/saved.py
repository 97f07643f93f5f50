"""Fine-tuned checkpoints: the encoder as a normal checkpoint, plus the head's two files.

`checkpoints/step_<N>/` holds what every checkpoint holds (so `load_pretrained`, fill-mask, the
probe and the MLM export accept the fine-tuned encoder) plus `classifier.safetensors` (the head's
tensors) and `classifier.json` (task type, labels, head options, fields, lengths), all covered by
the manifest. `load_classifier` rebuilds the model from them; the export recognises a fine-tuned
checkpoint by these files.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from mlm import checkpoint as ckpt
from mlm.errors import UserError
from mlm.tasks.heads import head_state, load_head_state
from mlm.tasks.kinds import TASKS, Fields, HeadSettings, TokenClassification, make_task, predict_split
from mlm.tokenizer import PAD

CLASSIFIER_WEIGHTS = "classifier.safetensors"
CLASSIFIER_INFO = "classifier.json"


def save_finetuned(out_dir: Path, step: int, model: nn.Module, tokenizer: Any, run_yaml: str,
                   info: dict[str, Any]) -> Path:
    """`out_dir/checkpoints/step_<step>`: an encoder checkpoint plus the head files, one manifest."""
    encoder = model.encoder
    contents = ckpt.CheckpointContents(encoder.state_dict(), asdict(encoder.cfg), tokenizer.to_str(), run_yaml,
                                       extra_tensors={CLASSIFIER_WEIGHTS: head_state(model)},
                                       extra_json={CLASSIFIER_INFO: info})
    return ckpt.save_checkpoint(out_dir / "checkpoints", step, contents)


def is_finetuned(path: str | Path) -> bool:
    """Whether a checkpoint (or a run's newest checkpoint) carries a fine-tuned head."""
    return (ckpt.resolve_checkpoint(path) / CLASSIFIER_INFO).is_file()


def read_info(found: Path) -> dict[str, Any]:
    """classifier.json of a fine-tuned checkpoint, with the defaults of files written before task types."""
    info_path = found / CLASSIFIER_INFO
    if not info_path.is_file():
        raise UserError(f"{found}: not a fine-tuned checkpoint (no {CLASSIFIER_INFO}); "
                        "use load_pretrained for pretrained checkpoints")
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except ValueError:
        raise UserError(f"{info_path}: not valid JSON") from None
    info.setdefault("task", "sequence_classification")
    info.setdefault("transform", "none")  # the head of earlier versions: dropout -> linear
    info.setdefault("pooling", "cls")
    if info["task"] not in TASKS or not isinstance(info.get("labels"), list):
        raise UserError(f"{info_path}: unknown task {info['task']!r} or no labels list")
    return info


def load_classifier(path: str | Path) -> tuple[nn.Module, Any, dict[str, Any]]:
    """(model, tokenizer, info) from a fine-tuned checkpoint or a fine-tuning output_dir: a
    `SequenceClassifier` (one output for regression) or a `TokenClassifier`, in eval mode."""
    found = ckpt.resolve_checkpoint(path)
    info = read_info(found)
    encoder, tokenizer = ckpt.load_pretrained(found)
    fields = Fields(info.get("text_field", "text"), info.get("text_pair_field", ""), info.get("label_field", "label"),
                    info.get("tokens_field", "tokens"), info.get("tags_field", "tags"))
    task = make_task(info["task"], fields, info["labels"])
    model = task.build(encoder, HeadSettings(info["pooling"], 0.0, info["transform"]))
    try:
        load_head_state(model, ckpt.load_model_weights(found, CLASSIFIER_WEIGHTS))
    except RuntimeError as err:
        raise UserError(f"{found / CLASSIFIER_WEIGHTS}: does not match {CLASSIFIER_INFO} "
                        f"({str(err).splitlines()[0][:200]})") from None
    return model.eval(), tokenizer, info


def predict_tags(model: nn.Module, tokenizer: Any, info: dict[str, Any], sentences: Sequence[Sequence[str]],
                 batch_size: int = 64) -> list[list[str]]:
    """One tag per word of each sentence (word lists) with a fine-tuned token classifier from
    `load_classifier`: encoded, windowed and read back exactly as in fine-tuning."""
    if info["task"] != "token_classification":
        raise UserError(f"predict_tags needs a token classifier; this checkpoint is {info['task']}")
    task = TokenClassification(labels=list(info["labels"]))
    split = task.encode_sentences(tokenizer, sentences, None, info["max_seq_len"], info["stride"])
    device = next(model.parameters()).device
    predicted = predict_split(task, model, split, tokenizer.token_to_id(PAD), batch_size, device)
    return task.tags_of(split, predicted)
