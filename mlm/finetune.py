"""Fine-tuning on top of a pretrained encoder: the downstream test of a checkpoint.

    python -m mlm.finetune --config configs/finetune.yaml init_from=runs/base \
        data.train_file=train.jsonl data.validation_file=dev.jsonl data.test_file=test.jsonl \
        output_dir=runs/ft

Shaped as setup → fit: read and encode the labelled files (`mlm.tasks`), build the encoder
(pretrained, or a random-weight twin for `init_from=scratch`, the baseline that says what
pretraining bought) and its head, then train with the same step as pretraining
(`mlm.loop.train_step`: AdamW with no decay on vectors, linear warmup and decay, clipping,
mixed precision), evaluating on validation after every epoch (or every `train.eval_every`
steps) with early stopping; the best validation state is tested and saved.

Outputs in `output_dir`: `results.json` and `checkpoints/step_<N>/`, a normal checkpoint (the
fine-tuned encoder with its unchanged MLM head: `load_pretrained`, fill-mask, export and the probe
accept it) plus `classifier.safetensors` and `classifier.json`, all covered by its manifest;
`load_classifier(output_dir)` rebuilds the classifier.
"""
from __future__ import annotations

import argparse
import copy
import contextlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlm import checkpoint as ckpt
from mlm.config import ModelConfig, load_config
from mlm.errors import UserError, run_cli
from mlm.loop import train_step
from mlm.model import MLMModel
from mlm.optim import build_optimizer, lr_at, set_lr
from mlm.padding import pad_batch
from mlm.runtime import Runtime, setup_runtime
from mlm.schema import (ConfigError, from_dict, require_literals, require_nonnegative, require_positive, to_dict,
                        to_yaml)
from mlm.storage import write_text_atomic
from mlm.tasks.encoding import encode_texts
from mlm.tasks.heads import SequenceClassifier
from mlm.tasks.metrics import classification_metrics, majority_accuracy
from mlm.tasks.records import LabeledData, encode_labels, label_names, read_labeled
from mlm.tokenizer import PAD, load_tokenizer, model_config_for

SCRATCH = "scratch"
CLASSIFIER_WEIGHTS = "classifier.safetensors"
CLASSIFIER_INFO = "classifier.json"

__all__ = ["FinetuneConfig", "finetune", "load_classifier", "predict", "classification_metrics", "label_names",
           "read_labeled", "tokenize", "SequenceClassifier", "main"]


# ---------------------------------------------------------------- config

@dataclass
class FinetuneDataConfig:
    """The labelled files and their fields."""

    train_file: str = ""
    """.jsonl (one object per line), .json (a list), .csv or .tsv (header row)."""
    validation_file: str = ""
    """Empty: hold out validation_fraction of the training file."""
    test_file: str = ""
    """Empty: no test metrics."""
    text_field: str = "text"
    text_pair_field: str = ""
    """Optional second segment: [CLS] text [SEP] pair [SEP]."""
    label_field: str = "label"
    """Strings or integers."""
    max_seq_len: int = 0
    """Tokens per example, longer ones truncated; 0: the model's max_seq_len."""
    validation_fraction: float = 0.1

    def validate(self) -> None:
        if not self.train_file:
            raise ConfigError("data.train_file must be set (a .jsonl, .csv or .tsv file)")
        require_nonnegative(self, "data", "max_seq_len")
        if not self.validation_file and not 0.0 < self.validation_fraction < 1.0:
            raise ConfigError("data.validation_file is not set, so data.validation_fraction must be in (0, 1) "
                              f"to hold out a validation split; got {self.validation_fraction}")
        if not self.text_field or not self.label_field:
            raise ConfigError("data.text_field and data.label_field must be set")


@dataclass
class HeadConfig:
    """The task head on the encoder."""

    pooling: Literal["cls", "mean"] = "cls"
    """The [CLS] state, or the mean over real tokens."""
    dropout: float = 0.1

    def validate(self) -> None:
        require_literals(self, "head")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"head.dropout must be in [0, 1), got {self.dropout}")


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
    """Evaluations without a better validation score before stopping; 0: never stop early."""
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


# ---------------------------------------------------------------- data and model

def tokenize(tokenizer: Any, data: LabeledData, max_len: int) -> list[list[int]]:
    """Token ids with [CLS]/[SEP], truncated to max_len (the tokenizer passed in is not modified)."""
    return encode_texts(tokenizer, data.texts, data.pairs, max_len)


def build_encoder(cfg: FinetuneConfig) -> tuple[MLMModel, Any]:
    """(encoder, tokenizer): pretrained from init_from, or a random-weight twin for init_from=scratch."""
    if cfg.init_from != SCRATCH:
        return ckpt.load_pretrained(cfg.init_from)
    if cfg.architecture_from:
        source = ckpt.resolve_checkpoint(cfg.architecture_from)
        model_cfg = from_dict(ModelConfig, ckpt.load_model_config(source), prefix="model.")
        tokenizer = load_tokenizer(cfg.tokenizer or source / ckpt.TOKENIZER_FILE)
        if cfg.tokenizer:
            model_cfg.vocab_size = 0  # another tokenizer: its vocabulary decides
    else:
        model_cfg = copy.deepcopy(cfg.model)
        tokenizer = load_tokenizer(cfg.tokenizer)
    torch.manual_seed(cfg.train.seed)
    return MLMModel(model_config_for(model_cfg, tokenizer)), tokenizer


def length_bucketed_batches(lengths: Sequence[int], batch_size: int, rng: np.random.Generator,
                            bucket: int = 50) -> list[np.ndarray]:
    """Shuffle, sort by length within windows of `bucket` batches, then shuffle the batches:
    random like plain shuffling at the window scale, but rows in a batch have similar lengths."""
    order = rng.permutation(len(lengths))
    lengths = np.asarray(lengths)
    batches = []
    window = batch_size * bucket
    for start in range(0, len(order), window):
        chunk = order[start:start + window]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


@torch.no_grad()
def predict(model: SequenceClassifier, rows: Sequence[Sequence[int]], pad_id: int, batch_size: int,
            device: torch.device, autocast: Any = None) -> list[int]:
    """Predicted label indices, in the order of `rows` (batched by length for speed)."""
    was_training = model.training
    model.eval()
    order = np.argsort([len(r) for r in rows], kind="stable")
    out = np.empty(len(rows), dtype=np.int64)
    for start in range(0, len(rows), batch_size):
        idx = order[start:start + batch_size]
        ids, mask = pad_batch([rows[i] for i in idx], pad_id)
        with autocast() if autocast is not None else contextlib.nullcontext():
            logits = model(ids.to(device), mask.to(device))
        out[idx] = logits.argmax(-1).cpu().numpy()
    model.train(was_training)
    return out.tolist()


def classification_loss(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """Summed cross-entropy of a batch of sequence labels."""
    return F.cross_entropy(model(batch["input_ids"], batch["attention_mask"]).float(), batch["labels"],
                           reduction="sum")


# ---------------------------------------------------------------- checkpoint

def save_finetuned(out_dir: Path, step: int, model: SequenceClassifier, tokenizer: Any, run_yaml: str,
                   info: dict[str, Any]) -> Path:
    """`out_dir/checkpoints/step_<step>`: an encoder checkpoint plus the classifier files, one manifest."""
    contents = ckpt.CheckpointContents(model.encoder.state_dict(), asdict(model.encoder.cfg), tokenizer.to_str(),
                                       run_yaml, extra_tensors={CLASSIFIER_WEIGHTS: model.classifier.state_dict()},
                                       extra_json={CLASSIFIER_INFO: info})
    return ckpt.save_checkpoint(out_dir / "checkpoints", step, contents)


def load_classifier(path: str | Path) -> tuple[SequenceClassifier, Any, dict[str, Any]]:
    """(classifier, tokenizer, info) from a fine-tuned checkpoint or a fine-tuning output_dir."""
    found = ckpt.resolve_checkpoint(path)
    info_path = found / CLASSIFIER_INFO
    if not info_path.is_file():
        raise UserError(f"{found}: not a fine-tuned checkpoint (no {CLASSIFIER_INFO}); "
                        "use load_pretrained for pretrained checkpoints")
    info = json.loads(info_path.read_text(encoding="utf-8"))
    encoder, tokenizer = ckpt.load_pretrained(found)
    model = SequenceClassifier(encoder, len(info["labels"]), info["pooling"], 0.0)
    try:
        model.classifier.load_state_dict(ckpt.load_model_weights(found, CLASSIFIER_WEIGHTS))
    except RuntimeError as err:
        raise UserError(f"{found / CLASSIFIER_WEIGHTS}: does not match {CLASSIFIER_INFO} "
                        f"({str(err).splitlines()[0][:200]})") from None
    return model.eval(), tokenizer, info


# ---------------------------------------------------------------- the run

@dataclass
class Split:
    """One labelled split, encoded: token rows and label indices."""
    data: LabeledData
    rows: list[list[int]]
    labels: list[int]


def _read_splits(cfg: FinetuneConfig) -> tuple[LabeledData, LabeledData, LabeledData | None]:
    d = cfg.data
    read = lambda p: read_labeled(p, d.text_field, d.label_field, d.text_pair_field)  # noqa: E731
    train = read(d.train_file)
    if d.validation_file:
        val = read(d.validation_file)
    else:
        order = np.random.default_rng(cfg.train.seed).permutation(len(train.texts))
        n_val = max(1, int(round(d.validation_fraction * len(order))))
        if n_val >= len(order):
            raise UserError(f"{train.source}: too few examples ({len(order)}) to hold out a validation split")
        train, val = train.subset(order[n_val:], "train part"), train.subset(order[:n_val],
                                                                              "held-out validation part")
    return train, val, read(d.test_file) if d.test_file else None


class BestState:
    """The best validation score so far, its state (CPU copy) and the patience count."""

    def __init__(self, patience: int):
        self.patience, self.score, self.metrics, self.state, self.since = patience, -1.0, {}, None, 0

    def offer(self, score: float, metrics: dict[str, Any], model: nn.Module) -> bool:
        """Record an evaluation; True when early stopping should end training."""
        if score > self.score:
            self.score, self.metrics, self.since = score, metrics, 0
            self.state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            return False
        self.since += 1
        return bool(self.patience) and self.since >= self.patience


def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Fine-tune as configured; writes results.json (and the checkpoint) and returns the results."""
    cfg.validate()
    started = time.monotonic()
    train_data, val_data, test_data = _read_splits(cfg)
    names = label_names(train_data.labels)
    if len(names) < 2:
        raise UserError(f"{cfg.data.train_file}: only one label ({names[0]!r}); classification needs at least two")
    t = cfg.train
    rt = setup_runtime(t.device, t.precision, t.num_threads)
    encoder, tokenizer = build_encoder(cfg)
    max_len = min(cfg.data.max_seq_len or encoder.cfg.max_seq_len, encoder.cfg.max_seq_len)
    split = lambda data: Split(data, tokenize(tokenizer, data, max_len), encode_labels(data, names))  # noqa: E731
    train, val = split(train_data), split(val_data)
    test = split(test_data) if test_data is not None else None
    torch.manual_seed(t.seed)  # same head init and dropout stream for pretrained and scratch runs
    model = SequenceClassifier(encoder, len(names), cfg.head.pooling, cfg.head.dropout).to(rt.device)
    best, history, steps, stopped_early = fit(model, train, val, names, tokenizer.token_to_id(PAD), cfg, rt)
    model.load_state_dict(best.state)
    results: dict[str, Any] = {
        "validation_accuracy": best.metrics["accuracy"], "validation_macro_f1": best.metrics["macro_f1"],
        "test_accuracy": None, "test_macro_f1": None,
        "init_from": cfg.init_from, "architecture_from": cfg.architecture_from or None,
        "labels": names, "num_train": len(train.rows), "num_validation": len(val.rows),
        "num_test": len(test.rows) if test is not None else 0,
        "best_step": best.metrics["step"], "best_epoch": round(best.metrics["epoch"], 3), "steps": steps,
        "stopped_early": stopped_early, "majority_baseline_test_accuracy": None,
    }
    if test is not None:
        m = classification_metrics(predict(model, test.rows, tokenizer.token_to_id(PAD), t.eval_batch_size,
                                           rt.device, rt.autocast), test.labels, len(names))
        results.update(test_accuracy=m["accuracy"], test_macro_f1=m["macro_f1"],
                       majority_baseline_test_accuracy=majority_accuracy(train.labels, test.labels, len(names)))
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.save_checkpoint:
        info = {"task": "sequence_classification", "labels": names, "pooling": cfg.head.pooling,
                "text_field": cfg.data.text_field, "text_pair_field": cfg.data.text_pair_field, "max_seq_len": max_len}
        results["checkpoint"] = str(save_finetuned(out_dir, best.metrics["step"], model.cpu(), tokenizer,
                                                   to_yaml(to_dict(cfg)), info))
    results["seconds"] = round(time.monotonic() - started, 1)
    results["history"] = history
    write_text_atomic(out_dir / "results.json", json.dumps(results, indent=2), what="the fine-tuning results")
    return results


def fit(model: SequenceClassifier, train: Split, val: Split, names: list[str], pad_id: int, cfg: FinetuneConfig,
        rt: Runtime) -> tuple[BestState, list[dict[str, Any]], int, bool]:
    """Train with early stopping on validation accuracy: (best, history, steps, stopped early)."""
    t = cfg.train
    steps_per_epoch = math.ceil(len(train.rows) / t.batch_size)
    total_steps = t.epochs * steps_per_epoch
    warmup = int(round(t.warmup_ratio * total_steps))
    optimizer = build_optimizer(model, t.lr, t.weight_decay, (0.9, 0.999), 1e-8, rt.device)
    scaler = torch.amp.GradScaler(rt.device.type) if rt.precision == "fp16" else None
    rng = np.random.default_rng(t.seed)
    best, history, losses = BestState(t.patience), [], []
    step = 0

    def evaluate_now(epoch: float) -> bool:
        m = classification_metrics(predict(model, val.rows, pad_id, t.eval_batch_size, rt.device, rt.autocast),
                                   val.labels, len(names))
        history.append({"step": step, "epoch": round(epoch, 3),
                        "train_loss": float(np.mean(losses)) if losses else float("nan"),
                        "validation_accuracy": m["accuracy"], "validation_macro_f1": m["macro_f1"]})
        losses.clear()
        print(f"step {step} epoch {epoch:.2f}: train_loss {history[-1]['train_loss']:.4f} "
              f"validation_accuracy {m['accuracy']:.4f}", file=sys.stderr)
        return best.offer(m["accuracy"], {**m, "step": step, "epoch": epoch}, model)

    model.train()
    for epoch in range(t.epochs):
        for rows in length_bucketed_batches([len(r) for r in train.rows], t.batch_size, rng):
            ids, mask = pad_batch([train.rows[i] for i in rows], pad_id)
            batch = {"input_ids": ids, "attention_mask": mask,
                     "labels": torch.as_tensor([train.labels[i] for i in rows])}
            set_lr(optimizer, lr_at(step, t.lr, warmup, total_steps, "linear", 0.0))
            losses.append(train_step(model, optimizer, [batch], rt, t.grad_clip, scaler, classification_loss).loss)
            step += 1
            if t.eval_every and step % t.eval_every == 0 and evaluate_now(step / steps_per_epoch):
                return best, history, step, step < total_steps
        if not t.eval_every and evaluate_now(float(epoch + 1)):
            return best, history, step, step < total_steps  # patience running out at the last step is no stop
    if not history or history[-1]["step"] != step:
        evaluate_now(step / steps_per_epoch)
    return best, history, step, False


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlm.finetune", description=__doc__.splitlines()[0])
    parser.add_argument("--config", "-c", help="YAML config (e.g. configs/finetune.yaml)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. init_from=runs/base")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides, cls=FinetuneConfig)
    results = finetune(cfg)
    print(json.dumps({k: results[k] for k in ("validation_accuracy", "test_accuracy", "test_macro_f1",
                                              "best_epoch", "steps", "stopped_early", "checkpoint")
                      if k in results}))
    return 0


if __name__ == "__main__":
    run_cli(main)
