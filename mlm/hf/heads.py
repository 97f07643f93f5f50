"""Export of fine-tuned models: `AutoModelForSequenceClassification` / `AutoModelForTokenClassification`
folders that compute exactly our logits, so `transformers.pipeline` serves them as they are.

The encoder maps as in the masked-LM export (`mlm.hf.mapping`); the heads map one to one, because
ours are built as theirs:

    sequence (head.pooling=cls, transform tanh)  -> BertForSequenceClassification: pooler.dense + tanh
                                                    on the first token, then classifier
                                                 -> RobertaPreLayerNormForSequenceClassification:
                                                    classifier.dense -> tanh -> classifier.out_proj
    sequence (rotary encoder, transform gelu)    -> RoFormerForSequenceClassification: classifier.dense
                                                    -> the encoder's activation (gelu) -> out_proj
    token (dropout -> linear per token)          -> <Arch>ForTokenClassification: classifier
    regression (one output)                      -> ...ForSequenceClassification, problem_type="regression"

What has no exact counterpart — mean pooling, a head without the dense transform (head.transform=none,
and checkpoints fine-tuned before transforms existed), a transform other than the architecture's —
is refused with a one-line reason instead of exported approximately. Like the masked-LM export, the
folder is reloaded and its logits compared with ours on a padded batch before success is reported.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mlm.errors import UserError
from mlm.hf.convert import hf_tokenizer, sample_batch, transformers_module
from mlm.hf.mapping import ARCHITECTURES, TOLERANCE, hf_architecture, hf_config_kwargs, to_hf_state
from mlm.tokenizer import CLS, SEP

SEQUENCE_CLASSES = {"bert": "BertForSequenceClassification",
                    "roberta-prelayernorm": "RobertaPreLayerNormForSequenceClassification",
                    "roformer": "RoFormerForSequenceClassification"}
TOKEN_CLASSES = {"bert": "BertForTokenClassification",
                 "roberta-prelayernorm": "RobertaPreLayerNormForTokenClassification",
                 "roformer": "RoFormerForTokenClassification"}
HEAD_ACTIVATION = {"bert": "tanh", "roberta-prelayernorm": "tanh", "roformer": "gelu"}


def head_architecture(model: nn.Module, info: dict[str, Any]) -> tuple[str, str]:
    """(architecture, transformers class) computing exactly this fine-tuned model, or a UserError
    saying why none does."""
    arch = hf_architecture(model.encoder.cfg)
    if info["task"] == "token_classification":
        return arch, TOKEN_CLASSES[arch]
    if model.pooling != "cls":
        raise UserError(f"head.pooling={model.pooling} has no transformers equivalent (their sequence heads read "
                        "the first token); fine-tune with head.pooling=cls to export")
    if model.transform is None:
        raise UserError("this head (dropout -> linear on [CLS]: head.transform=none, or a model fine-tuned before "
                        "head transforms existed) has no transformers equivalent: their sequence heads apply a dense "
                        "layer and an activation first; fine-tune with head.transform=auto to export")
    needed = HEAD_ACTIVATION[arch]
    if model.transform_kind != needed:
        raise UserError(f"head.transform={model.transform_kind}, but {SEQUENCE_CLASSES[arch]} (the exact match of "
                        f"this encoder) applies {needed}; fine-tune with head.transform=auto to export")
    return arch, SEQUENCE_CLASSES[arch]


def to_hf_head_state(model: nn.Module, arch: str, token_task: bool) -> dict[str, Tensor]:
    """The transformers state_dict of the classifier: the encoder under its base-model prefix, the head
    under transformers' names (no masked-LM head)."""
    prefix = ARCHITECTURES[arch][2]
    encoder = model.encoder
    state = {k: v for k, v in to_hf_state(encoder.state_dict(), encoder.cfg, arch).items()
             if k.startswith(f"{prefix}.")}
    take = lambda layer, name: state.update({f"{name}.{p}": t.detach().float().clone()  # noqa: E731
                                             for p, t in layer.state_dict().items()})
    if token_task:
        take(model.classifier, "classifier")
    elif arch == "bert":
        take(model.transform, f"{prefix}.pooler.dense")
        take(model.classifier, "classifier")
    else:
        take(model.transform, "classifier.dense")
        take(model.classifier, "classifier.out_proj")
    return state


def hf_classifier_config(tf: Any, model: nn.Module, tokenizer: Any, info: dict[str, Any], arch: str,
                         model_cls: str) -> Any:
    """The transformers config: the encoder's, plus labels, problem type and head dropout."""
    labels = list(info["labels"]) if info["task"] != "regression" else ["score"]
    kwargs = hf_config_kwargs(model.encoder.cfg, arch, tokenizer.token_to_id(CLS), tokenizer.token_to_id(SEP))
    kwargs.update(num_labels=len(labels), id2label=dict(enumerate(labels)),
                  label2id={name: i for i, name in enumerate(labels)}, classifier_dropout=info.get("dropout"),
                  problem_type="regression" if info["task"] == "regression" else
                  ("single_label_classification" if info["task"] == "sequence_classification" else None))
    config = getattr(tf, ARCHITECTURES[arch][0])(**kwargs)
    config.architectures = [model_cls]
    return config


def export_classifier(model: nn.Module, tokenizer: Any, info: dict[str, Any], out_dir: str | Path,
                      check: bool = True) -> dict[str, Any]:
    """Write a fine-tuned model (from `mlm.finetune.load_classifier`) as a transformers folder that
    `AutoModelFor{Sequence,Token}Classification` and `pipeline` load offline; with `check`, reload it and
    compare logits (≤ 1e-4). Returns {"architecture", "path", "task", "labels", "max_abs_diff"}."""
    tf = transformers_module()
    arch, model_cls = head_architecture(model, info)
    token_task = info["task"] == "token_classification"
    hf_model = getattr(tf, model_cls)(hf_classifier_config(tf, model, tokenizer, info, arch, model_cls))
    missing, unexpected = hf_model.load_state_dict(to_hf_head_state(model, arch, token_task), strict=False)
    missing = [k for k in missing if not k.endswith("embed_positions.weight")]  # RoFormer: fixed sinusoids
    if missing or unexpected:
        raise RuntimeError(f"export mapping incomplete for {model_cls}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not (out / "config.json").is_file():
        raise UserError(f"{out}: exists and is not an exported model folder; choose an empty or new folder")
    out.mkdir(parents=True, exist_ok=True)
    hf_model.save_pretrained(out)
    hf_tokenizer(tokenizer, model.encoder.cfg.max_seq_len).save_pretrained(out)
    result: dict[str, Any] = {"architecture": model_cls, "path": str(out), "task": info["task"],
                              "labels": hf_model.config.id2label}
    if check:
        auto = tf.AutoModelForTokenClassification if token_task else tf.AutoModelForSequenceClassification
        reloaded = auto.from_pretrained(out, local_files_only=True).eval()
        result["max_abs_diff"] = compare_classifier_logits(model, tokenizer, reloaded)
    return result


@torch.no_grad()
def compare_classifier_logits(model: nn.Module, tokenizer: Any, hf_model: Any, tolerance: float = TOLERANCE) -> float:
    """Max |ours - theirs| of the classifier logits on a padded batch (every real token for token
    classifiers); raises above `tolerance`."""
    model.eval()
    ids, mask = sample_batch(tokenizer, model.encoder.cfg.max_seq_len)
    ours = model(ids, mask).float()
    theirs = hf_model(input_ids=ids, attention_mask=mask).logits.float()
    if ours.dim() == 3:  # token logits: compare real tokens only
        ours, theirs = ours[mask.bool()], theirs[mask.bool()]
    diff = float((ours - theirs).abs().max())
    if not diff <= tolerance:
        raise RuntimeError(f"classifier logits differ by {diff:.3g} (> {tolerance:g}) between mlm and transformers; "
                           "the mapping is wrong for this model, please report it")
    return diff
