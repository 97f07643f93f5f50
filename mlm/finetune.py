"""Sequence classification on top of a pretrained encoder: the downstream test of a checkpoint.

    python -m mlm.finetune --config configs/finetune.yaml init_from=runs/base \
        data.train_file=train.jsonl data.validation_file=dev.jsonl data.test_file=test.jsonl \
        output_dir=runs/ft

Examples are read from JSONL (one object per line) or CSV/TSV (header row): text from
`data.text_field` (optionally a second segment from `data.text_pair_field`), label from
`data.label_field`, strings or ints. The classifier is the encoder's final hidden state at
[CLS] (or the mean over real tokens, `head.pooling=mean`) -> dropout -> linear. Training is
AdamW (the trainer's `build_optimizer`: no decay on vectors) with linear warmup and decay
(the trainer's `lr_at`), batches padded to their longest row with an attention mask (rows
of similar length are batched together, so little compute goes to padding), and early
stopping on validation accuracy; the best validation state is kept and evaluated on test.

`init_from=scratch` trains the same architecture from random weights, the baseline that
says what pretraining bought. The architecture and tokenizer then come from
`architecture_from=<checkpoint>` (its model_config.json and tokenizer.json; `tokenizer=`
overrides the tokenizer), or, without it, from `tokenizer=<tokenizer.json>` plus the
`model:` section.

Outputs in `output_dir`: `results.json` (validation_accuracy, test_accuracy, test_macro_f1,
history, ...) and `checkpoints/step_<N>/`, a normal checkpoint folder (the fine-tuned encoder
with its unchanged MLM head: `load_pretrained`, fill-mask, export and the probe accept it)
plus `classifier.safetensors` and `classifier.json` (labels, pooling), both covered by the
manifest; `load_classifier(output_dir)` rebuilds the classifier.
"""
from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlm.config import Config, ConfigError, ModelConfig, TrainConfig, config_to_dict, from_dict, load_config
from mlm.schema import require_choice as _choice, require_nonnegative as _nonnegative, require_positive as _positive
from mlm.errors import UserError, run_cli
from mlm.tokenizer import PAD

SCRATCH = "scratch"
CLASSIFIER_WEIGHTS = "classifier.safetensors"
CLASSIFIER_INFO = "classifier.json"


# ---------------------------------------------------------------- config

@dataclass
class FinetuneDataConfig:
    train_file: str = ""
    validation_file: str = ""  # empty: hold out validation_fraction of the training file
    test_file: str = ""  # empty: no test metrics
    text_field: str = "text"
    text_pair_field: str = ""  # optional second segment ([CLS] a [SEP] b [SEP])
    label_field: str = "label"
    max_seq_len: int = 0  # tokens per example, longer ones truncated; 0: the model's max_seq_len
    validation_fraction: float = 0.1

    def validate(self) -> None:
        if not self.train_file:
            raise ConfigError("data.train_file must be set (a .jsonl, .csv or .tsv file)")
        _nonnegative(self, "data", "max_seq_len")
        if not self.validation_file and not 0.0 < self.validation_fraction < 1.0:
            raise ConfigError("data.validation_file is not set, so data.validation_fraction must be in (0, 1) "
                              f"to hold out a validation split; got {self.validation_fraction}")
        if not self.text_field or not self.label_field:
            raise ConfigError("data.text_field and data.label_field must be set")


@dataclass
class HeadConfig:
    pooling: str = "cls"  # cls | mean
    dropout: float = 0.1

    def validate(self) -> None:
        _choice(self, "head", "pooling", ("cls", "mean"))
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"head.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class FinetuneTrainConfig:
    epochs: int = 10
    batch_size: int = 32
    eval_batch_size: int = 64
    lr: float = 3e-4  # right for small encoders (hidden 256); BERT-base-sized ones want 2e-5 to 1e-4
    warmup_ratio: float = 0.1  # of all steps
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    eval_every: int = 0  # steps; 0: once per epoch
    patience: int = 3  # evaluations without a better validation accuracy before stopping; 0: never stop early
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    num_threads: int = 0

    def validate(self) -> None:
        _positive(self, "train", "epochs", "batch_size", "eval_batch_size")
        _nonnegative(self, "train", "weight_decay", "grad_clip", "eval_every", "patience", "num_threads")
        _choice(self, "train", "device", ("auto", "cpu", "cuda"))
        _choice(self, "train", "precision", ("auto", "fp32", "bf16", "fp16"))
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be positive, got {self.lr}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"train.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")


@dataclass
class FinetuneConfig:
    output_dir: str = "runs/finetune"
    init_from: str = ""  # checkpoint folder or run output_dir; "scratch": random weights
    architecture_from: str = ""  # init_from=scratch: copy this checkpoint's model config and tokenizer
    tokenizer: str = ""  # init_from=scratch: tokenizer.json (overrides architecture_from's)
    save_checkpoint: bool = True
    data: FinetuneDataConfig = field(default_factory=FinetuneDataConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    train: FinetuneTrainConfig = field(default_factory=FinetuneTrainConfig)
    model: ModelConfig = field(default_factory=ModelConfig)  # init_from=scratch without architecture_from

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


# ---------------------------------------------------------------- data

@dataclass
class LabeledData:
    texts: list[str]
    pairs: list[str] | None
    labels: list[str]  # label names, as strings
    source: str


def iter_records(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, record) from JSONL, a JSON list, or CSV/TSV with a header row."""
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv"):
            with open(path, encoding="utf-8", newline="") as fh:
                reader = csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ",")
                for row in reader:
                    yield reader.line_num, row
            return
        if suffix not in (".jsonl", ".json", ".ndjson"):
            raise UserError(f"{path}: unknown format {suffix!r}; use .jsonl, .json, .csv or .tsv")
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a UTF-8 text file") from None
    if suffix == ".json" and text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except ValueError as err:
            raise UserError(f"{path}: invalid JSON ({err})") from None
        yield from ((i + 1, r) for i, r in enumerate(records))
        return
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield n, json.loads(line)
            except ValueError as err:
                raise UserError(f"{path}:{n}: invalid JSON ({err.msg})") from None


def read_labeled(path: str | Path, text_field: str = "text", label_field: str = "label",
                 pair_field: str = "") -> LabeledData:
    """Read a labeled file; every mistake is one error naming the file, line and field."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: labeled data file not found")
    texts: list[str] = []
    pairs: list[str] = []
    labels: list[str] = []
    for n, rec in iter_records(path):
        if not isinstance(rec, dict):
            raise UserError(f"{path}:{n}: expected an object with {text_field!r} and {label_field!r}, got "
                            f"{type(rec).__name__}")
        for key in (text_field, label_field) + ((pair_field,) if pair_field else ()):
            if key not in rec or rec[key] is None:
                raise UserError(f"{path}:{n}: no {key!r} field (fields: {', '.join(map(str, rec))}); "
                                f"set data.text_field / data.label_field")
        text = rec[text_field]
        if not isinstance(text, str):
            raise UserError(f"{path}:{n}: {text_field!r} must be a string, got {text!r:.60}")
        label = rec[label_field]
        if isinstance(label, bool) or not isinstance(label, (str, int, float)) or (
                isinstance(label, float) and not label.is_integer()):
            raise UserError(f"{path}:{n}: {label_field!r} must be a string or an integer, got {label!r:.60}")
        texts.append(text)
        labels.append(str(int(label)) if isinstance(label, (int, float)) else label.strip())
        if pair_field:
            pairs.append(str(rec[pair_field]))
    if not texts:
        raise UserError(f"{path}: no examples")
    return LabeledData(texts, pairs if pair_field else None, labels, str(path))


def label_names(labels: Sequence[str]) -> list[str]:
    """Sorted label set: numerically when every label is an integer, else alphabetically."""
    names = set(labels)
    if all(n.lstrip("-").isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)


def encode_labels(data: LabeledData, names: Sequence[str]) -> list[int]:
    index = {n: i for i, n in enumerate(names)}
    out = []
    for i, label in enumerate(data.labels):
        if label not in index:
            raise UserError(f"{data.source}: example {i + 1} has label {label!r}, which the training data "
                            f"does not have (labels: {', '.join(names)})")
        out.append(index[label])
    return out


def tokenize(tokenizer: Any, data: LabeledData, max_len: int) -> list[list[int]]:
    """Token ids with [CLS]/[SEP], truncated to max_len (the tokenizer passed in is not modified)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tokenizer.to_str())
    tok.no_padding()
    tok.enable_truncation(max_length=max_len)
    tok.encode_special_tokens = True  # a literal "[SEP]" in the text is text, as in pretraining data
    inputs = list(zip(data.texts, data.pairs)) if data.pairs is not None else data.texts
    return [e.ids for e in tok.encode_batch(inputs)]


def pad_batch(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Pad to the longest row: (input_ids, attention_mask), both (b, longest)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.as_tensor(r, dtype=torch.long)
        mask[i, :len(r)] = 1
    return ids, mask


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


# ---------------------------------------------------------------- model

class SequenceClassifier(nn.Module):
    """Encoder -> pooled state ([CLS] or masked mean) -> dropout -> linear."""

    def __init__(self, encoder: nn.Module, num_labels: int, pooling: str = "cls", dropout: float = 0.1):
        super().__init__()
        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
        self.encoder, self.pooling, self.num_labels = encoder, pooling, num_labels
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(encoder.cfg.hidden_size, num_labels)
        nn.init.normal_(self.classifier.weight, 0.0, encoder.cfg.init_std)
        nn.init.zeros_(self.classifier.bias)

    def pool(self, input_ids: Tensor, attention_mask: Tensor | None) -> Tensor:
        hidden = self.encoder.encode(input_ids, attention_mask)  # (b, s, h), zeros at padding
        if self.pooling == "cls":
            return hidden[:, 0]
        if attention_mask is None:
            return hidden.mean(dim=1)
        m = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (b, s, 1)
        return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self.classifier(self.dropout(self.pool(input_ids, attention_mask))).float()  # (b, labels)


def build_encoder(cfg: FinetuneConfig) -> tuple[nn.Module, Any]:
    """(encoder, tokenizer): pretrained from init_from, or a random-weight twin for init_from=scratch."""
    from mlm.checkpoint import TOKENIZER_FILE, load_model_config, load_pretrained, resolve_checkpoint
    from mlm.model import MLMModel
    from mlm.tokenizer import load_tokenizer
    from mlm.train import model_config_for

    if cfg.init_from != SCRATCH:
        return load_pretrained(cfg.init_from)
    if cfg.architecture_from:
        ckpt = resolve_checkpoint(cfg.architecture_from)
        model_cfg = from_dict(ModelConfig, load_model_config(ckpt), prefix="model.")
        tokenizer = load_tokenizer(cfg.tokenizer or ckpt / TOKENIZER_FILE)
        if cfg.tokenizer:
            model_cfg.vocab_size = 0  # another tokenizer: its vocabulary decides
    else:
        model_cfg = copy.deepcopy(cfg.model)
        tokenizer = load_tokenizer(cfg.tokenizer)
    model_cfg = model_config_for(Config(model=model_cfg), tokenizer)
    torch.manual_seed(cfg.train.seed)
    return MLMModel(model_cfg), tokenizer


# ---------------------------------------------------------------- metrics

def classification_metrics(pred: Sequence[int], gold: Sequence[int], num_labels: int) -> dict[str, float]:
    """Accuracy and macro-F1: the unweighted mean of per-label F1 over the labels that occur in
    `gold` or `pred` (so a rare label counts as much as a frequent one)."""
    p, g = np.asarray(pred), np.asarray(gold)
    f1s = []
    for c in range(num_labels):
        tp = int(((p == c) & (g == c)).sum())
        fp = int(((p == c) & (g != c)).sum())
        fn = int(((p != c) & (g == c)).sum())
        if tp + fp + fn:
            f1s.append(2 * tp / (2 * tp + fp + fn))
    return {"accuracy": float((p == g).mean()) if len(g) else 0.0,
            "macro_f1": float(np.mean(f1s)) if f1s else 0.0}


@torch.no_grad()
def predict(model: SequenceClassifier, rows: Sequence[Sequence[int]], pad_id: int, batch_size: int,
            device: torch.device, autocast: Any = None) -> list[int]:
    """Predicted label indices, in the order of `rows` (batched by length for speed)."""
    import contextlib

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


# ---------------------------------------------------------------- checkpoint

def save_finetuned(out_dir: Path, step: int, model: SequenceClassifier, tokenizer: Any, run_yaml: str,
                   info: dict[str, Any]) -> Path:
    """`out_dir/checkpoints/step_<step>`: an encoder checkpoint plus the classifier files, all in
    the manifest; built under a temporary name and renamed, so it appears complete or not at all."""
    from safetensors.torch import save_file

    from mlm.checkpoint import MANIFEST_FILE, save_checkpoint, sha256_file

    staging = out_dir / f".staging_{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    path = save_checkpoint(staging, step, model.encoder.state_dict(), asdict(model.encoder.cfg),
                           tokenizer.to_str(), run_yaml, None)
    head = {k: v.detach().cpu().contiguous() for k, v in model.classifier.state_dict().items()}
    save_file(head, str(path / CLASSIFIER_WEIGHTS), metadata={"format": "pt"})
    (path / CLASSIFIER_INFO).write_text(json.dumps(info, indent=2), encoding="utf-8")
    manifest = json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8"))
    for name in (CLASSIFIER_WEIGHTS, CLASSIFIER_INFO):
        manifest["files"][name] = {"size": (path / name).stat().st_size, "sha256": sha256_file(path / name)}
    tmp = path / (MANIFEST_FILE + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    os.replace(tmp, path / MANIFEST_FILE)
    final = out_dir / "checkpoints" / path.name
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        shutil.rmtree(final)
    os.replace(path, final)
    shutil.rmtree(staging, ignore_errors=True)
    return final


def load_classifier(path: str | Path) -> tuple[SequenceClassifier, Any, dict[str, Any]]:
    """(classifier, tokenizer, info) from a fine-tuned checkpoint or a fine-tuning output_dir."""
    from safetensors.torch import load_file

    from mlm.checkpoint import load_pretrained, resolve_checkpoint

    ckpt = resolve_checkpoint(path)
    info_path = ckpt / CLASSIFIER_INFO
    if not info_path.is_file():
        raise UserError(f"{ckpt}: not a fine-tuned checkpoint (no {CLASSIFIER_INFO}); "
                        "use load_pretrained for pretrained checkpoints")
    info = json.loads(info_path.read_text(encoding="utf-8"))
    encoder, tokenizer = load_pretrained(ckpt)
    model = SequenceClassifier(encoder, len(info["labels"]), info["pooling"], 0.0)
    try:
        model.classifier.load_state_dict(load_file(str(ckpt / CLASSIFIER_WEIGHTS)))
    except (RuntimeError, OSError) as err:
        raise UserError(f"{ckpt / CLASSIFIER_WEIGHTS}: does not match {CLASSIFIER_INFO} "
                        f"({str(err).splitlines()[0][:200]})") from None
    return model.eval(), tokenizer, info


# ---------------------------------------------------------------- the run

def _split_validation(data: LabeledData, fraction: float, seed: int) -> tuple[LabeledData, LabeledData]:
    order = np.random.default_rng(seed).permutation(len(data.texts))
    n_val = max(1, int(round(fraction * len(order))))
    if n_val >= len(order):
        raise UserError(f"{data.source}: too few examples ({len(order)}) to hold out a validation split")

    def take(idx: np.ndarray, suffix: str) -> LabeledData:
        return LabeledData([data.texts[i] for i in idx], [data.pairs[i] for i in idx] if data.pairs else None,
                           [data.labels[i] for i in idx], f"{data.source} ({suffix})")

    return take(order[n_val:], "train part"), take(order[:n_val], "held-out validation part")


def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Fine-tune as configured; writes results.json (and the checkpoint) and returns the results."""
    from mlm.train import build_optimizer, lr_at, setup_runtime

    cfg.validate()
    started = time.monotonic()
    d = cfg.data
    read = lambda p: read_labeled(p, d.text_field, d.label_field, d.text_pair_field)  # noqa: E731
    train_data = read(d.train_file)
    if d.validation_file:
        val_data = read(d.validation_file)
    else:
        train_data, val_data = _split_validation(train_data, d.validation_fraction, cfg.train.seed)
    test_data = read(d.test_file) if d.test_file else None
    names = label_names(train_data.labels)
    if len(names) < 2:
        raise UserError(f"{d.train_file}: only one label ({names[0]!r}); classification needs at least two")
    y_train = encode_labels(train_data, names)
    y_val = encode_labels(val_data, names)
    y_test = encode_labels(test_data, names) if test_data else None

    t = cfg.train
    rt = setup_runtime(TrainConfig(device=t.device, precision=t.precision, num_threads=t.num_threads))
    encoder, tokenizer = build_encoder(cfg)
    max_len = min(d.max_seq_len or encoder.cfg.max_seq_len, encoder.cfg.max_seq_len)
    pad_id = tokenizer.token_to_id(PAD)
    x_train, x_val = tokenize(tokenizer, train_data, max_len), tokenize(tokenizer, val_data, max_len)
    x_test = tokenize(tokenizer, test_data, max_len) if test_data else None

    torch.manual_seed(t.seed)  # same head init and dropout stream for pretrained and scratch runs
    model = SequenceClassifier(encoder, len(names), cfg.head.pooling, cfg.head.dropout).to(rt.device)
    steps_per_epoch = math.ceil(len(x_train) / t.batch_size)
    total_steps = t.epochs * steps_per_epoch
    schedule = TrainConfig(lr=t.lr, max_steps=total_steps, warmup_steps=int(round(t.warmup_ratio * total_steps)),
                           schedule="linear", min_lr_ratio=0.0, weight_decay=t.weight_decay,
                           beta1=0.9, beta2=0.999, eps=1e-8)
    optimizer = build_optimizer(model, schedule, rt.device)
    scaler = torch.amp.GradScaler(rt.device.type) if rt.precision == "fp16" else None
    rng = np.random.default_rng(t.seed)
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"accuracy": -1.0}
    best_state: dict[str, Tensor] | None = None
    evals_since_best, step, stopped_early = 0, 0, False

    def run_eval(epoch: float) -> bool:
        """Evaluate on validation; True when early stopping should end training."""
        nonlocal best_state, evals_since_best
        m = classification_metrics(predict(model, x_val, pad_id, t.eval_batch_size, rt.device, rt.autocast),
                                   y_val, len(names))
        history.append({"step": step, "epoch": round(epoch, 3), "train_loss": loss_avg(),
                        "validation_accuracy": m["accuracy"], "validation_macro_f1": m["macro_f1"]})
        print(f"step {step} epoch {epoch:.2f}: train_loss {history[-1]['train_loss']:.4f} "
              f"validation_accuracy {m['accuracy']:.4f}", file=sys.stderr)
        if m["accuracy"] > best["accuracy"]:
            best.update(m, step=step, epoch=epoch)
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            evals_since_best = 0
            return False
        evals_since_best += 1
        return bool(t.patience) and evals_since_best >= t.patience

    losses: list[float] = []

    def loss_avg() -> float:
        value = float(np.mean(losses)) if losses else float("nan")
        losses.clear()
        return value

    model.train()
    for epoch in range(t.epochs):
        for batch in length_bucketed_batches([len(r) for r in x_train], t.batch_size, rng):
            ids, mask = pad_batch([x_train[i] for i in batch], pad_id)
            target = torch.as_tensor([y_train[i] for i in batch], device=rt.device)
            for g in optimizer.param_groups:
                g["lr"] = lr_at(step, schedule)
            with rt.autocast():
                logits = model(ids.to(rt.device), mask.to(rt.device))
            loss = F.cross_entropy(logits.float(), target)
            (scaler.scale(loss) if scaler is not None else loss).backward()
            if scaler is not None:
                scaler.unscale_(optimizer)
            if t.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            step += 1
            if t.eval_every and step % t.eval_every == 0 and run_eval(step / steps_per_epoch):
                stopped_early = True
                break
        if stopped_early:
            break
        if not t.eval_every and run_eval(float(epoch + 1)):
            stopped_early = True
            break
    if not history or history[-1]["step"] != step:
        run_eval(step / steps_per_epoch)
    stopped_early = stopped_early and step < total_steps  # patience running out at the last step is no stop

    model.load_state_dict(best_state)
    results: dict[str, Any] = {
        "validation_accuracy": best["accuracy"], "validation_macro_f1": best["macro_f1"],
        "test_accuracy": None, "test_macro_f1": None,
        "init_from": cfg.init_from, "architecture_from": cfg.architecture_from or None,
        "labels": names, "num_train": len(x_train), "num_validation": len(x_val),
        "num_test": len(x_test) if x_test is not None else 0,
        "best_step": best["step"], "best_epoch": round(best["epoch"], 3), "steps": step,
        "stopped_early": stopped_early, "majority_baseline_test_accuracy": None,
    }
    if x_test is not None:
        m = classification_metrics(predict(model, x_test, pad_id, t.eval_batch_size, rt.device, rt.autocast),
                                   y_test, len(names))
        results.update(test_accuracy=m["accuracy"], test_macro_f1=m["macro_f1"],
                       majority_baseline_test_accuracy=float(np.mean(
                           np.asarray(y_test) == np.bincount(y_train, minlength=len(names)).argmax())))
    if cfg.save_checkpoint:
        info = {"task": "sequence_classification", "labels": names, "pooling": cfg.head.pooling,
                "text_field": d.text_field, "text_pair_field": d.text_pair_field, "max_seq_len": max_len}
        run_yaml = _yaml(config_to_dict(cfg))
        results["checkpoint"] = str(save_finetuned(out_dir, best["step"], model.cpu(), tokenizer, run_yaml, info))
    results["seconds"] = round(time.monotonic() - started, 1)
    results["history"] = history
    (out_dir / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    return results


def _yaml(data: dict[str, Any]) -> str:
    import yaml
    return yaml.safe_dump(data, sort_keys=False)


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
