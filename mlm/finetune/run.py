"""The fine-tuning run, shaped as setup → fit, for every task type of `mlm.tasks.kinds`.

Setup reads and encodes the labelled files, builds the encoder (pretrained, or a random-weight
twin for `init_from=scratch`, the baseline that says what pretraining bought) and the task's head.
Fit trains with the step pretraining uses (`mlm.loop.train_step` with the task's loss: AdamW with
no decay on vectors, linear warmup and decay, clipping, mixed precision), evaluates on validation
after every epoch (or every `train.eval_every` steps) and stops early when the task's score
(accuracy, entity F1, Pearson) stops improving; the best validation state is tested and saved.
"""
from __future__ import annotations

import copy
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from mlm import checkpoint as ckpt
from mlm.errors import UserError
from mlm.finetune.config import SCRATCH, FinetuneConfig
from mlm.finetune.saved import save_finetuned
from mlm.loop import train_step
from mlm.model import MLMModel, ModelConfig
from mlm.optim import build_optimizer, lr_at, set_lr
from mlm.runtime import Runtime, setup_runtime
from mlm.schema import from_dict, to_dict, to_yaml
from mlm.storage import write_text_atomic
from mlm.tasks.kinds import Encoded, Task, make_task, predict_split
from mlm.tokenizer import PAD, load_tokenizer, model_config_for


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


def read_splits(task: Task, cfg: FinetuneConfig) -> tuple[Any, Any, Any]:
    """(train, validation, test or None) as read; without a validation file, a seeded hold-out."""
    d = cfg.data
    train = task.read(d.train_file)
    if d.validation_file:
        val = task.read(d.validation_file)
    else:
        order = np.random.default_rng(cfg.train.seed).permutation(task.size(train))
        n_val = max(1, int(round(d.validation_fraction * len(order))))
        if n_val >= len(order):
            raise UserError(f"{d.train_file}: too few examples ({len(order)}) to hold out a validation split")
        train, val = (task.subset(train, order[n_val:], "train part"),
                      task.subset(train, order[:n_val], "held-out validation part"))
    return train, val, task.read(d.test_file) if d.test_file else None


@dataclass
class BestState:
    """The best validation score so far, its state (CPU copy) and the patience count."""
    patience: int
    score: float = -math.inf
    metrics: dict[str, Any] = field(default_factory=dict)
    state: dict[str, torch.Tensor] | None = None
    since: int = 0

    def offer(self, score: float, metrics: dict[str, Any], model: nn.Module) -> bool:
        """Record an evaluation; True when early stopping should end training. The first evaluation
        is always kept (a NaN score never beats another)."""
        if self.state is None or score > self.score:
            self.score = score if not math.isnan(score) else -math.inf
            self.metrics, self.since = metrics, 0
            self.state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            return False
        self.since += 1
        return bool(self.patience) and self.since >= self.patience


@dataclass
class Fitted:
    """What fit returns: the best state, the history, steps and how training ended, its time."""
    best: BestState
    history: list[dict[str, Any]]
    steps: int
    stopped_early: bool
    train_seconds: float
    steps_per_epoch: int


class Evaluator:
    """Validation during training: predict, score with the task's metrics, record history."""

    def __init__(self, task: Task, model: nn.Module, val: Encoded, pad_id: int, cfg: FinetuneConfig, rt: Runtime):
        self.task, self.model, self.val, self.pad_id, self.cfg, self.rt = task, model, val, pad_id, cfg, rt
        self.best = BestState(cfg.train.patience)
        self.history: list[dict[str, Any]] = []
        self.seconds = 0.0

    def __call__(self, step: int, epoch: float, losses: list[float]) -> bool:
        """Evaluate now; True when early stopping ends training."""
        started = time.monotonic()
        pred = predict_split(self.task, self.model, self.val, self.pad_id, self.cfg.train.eval_batch_size,
                             self.rt.device, self.rt.autocast)
        m = self.task.metrics(self.val, pred)
        self.history.append({"step": step, "epoch": round(epoch, 3),
                             "train_loss": float(np.mean(losses)) if losses else float("nan"),
                             **{f"validation_{k}": v for k, v in m.items()}})
        losses.clear()
        name = self.task.score_name
        print(f"step {step} epoch {epoch:.2f}: train_loss {self.history[-1]['train_loss']:.4f} "
              f"validation_{name} {m[name]:.4f}", file=sys.stderr)
        self.seconds += time.monotonic() - started
        return self.best.offer(self.task.score(m), {**m, "step": step, "epoch": epoch}, self.model)


def fit(task: Task, model: nn.Module, train: Encoded, val: Encoded, pad_id: int, cfg: FinetuneConfig,
        rt: Runtime) -> Fitted:
    """Train with early stopping on the task's validation score."""
    t = cfg.train
    steps_per_epoch = math.ceil(len(train.rows) / t.batch_size)
    total_steps = t.epochs * steps_per_epoch
    warmup = int(round(t.warmup_ratio * total_steps))
    optimizer = build_optimizer(model, t.lr, t.weight_decay, (0.9, 0.999), 1e-8, rt.device)
    scaler = torch.amp.GradScaler(rt.device.type) if rt.precision == "fp16" else None
    rng = np.random.default_rng(t.seed)
    evaluate = Evaluator(task, model, val, pad_id, cfg, rt)
    losses: list[float] = []
    step, started = 0, time.monotonic()

    def done(stopped: bool) -> Fitted:
        seconds = time.monotonic() - started - evaluate.seconds
        return Fitted(evaluate.best, evaluate.history, step, stopped, seconds, steps_per_epoch)

    model.train()
    for epoch in range(t.epochs):
        for rows in length_bucketed_batches([len(r) for r in train.rows], t.batch_size, rng):
            batch = task.batch(train, rows.tolist(), pad_id)
            set_lr(optimizer, lr_at(step, t.lr, warmup, total_steps, "linear", 0.0))
            losses.append(train_step(model, optimizer, [batch], rt, t.grad_clip, scaler, task.loss).loss)
            step += 1
            if t.eval_every and step % t.eval_every == 0 and evaluate(step, step / steps_per_epoch, losses):
                return done(step < total_steps)
        if not t.eval_every and evaluate(step, float(epoch + 1), losses):
            return done(step < total_steps)  # patience running out at the last step is no stop
    if not evaluate.history or evaluate.history[-1]["step"] != step:
        evaluate(step, step / steps_per_epoch, losses)
    return done(False)


def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Fine-tune as configured; writes results.json (and the checkpoint) and returns the results."""
    cfg.validate()
    started = time.monotonic()
    task = make_task(cfg.task, cfg.data.fields())
    train_data, val_data, test_data = read_splits(task, cfg)
    task.set_labels(train_data)
    t = cfg.train
    rt = setup_runtime(t.device, t.precision, t.num_threads)
    encoder, tokenizer = build_encoder(cfg)
    max_len = min(cfg.data.max_seq_len or encoder.cfg.max_seq_len, encoder.cfg.max_seq_len)
    encode = lambda data: task.encode(tokenizer, data, max_len, cfg.data.stride)  # noqa: E731
    train, val = encode(train_data), encode(val_data)
    test = encode(test_data) if test_data is not None else None
    torch.manual_seed(t.seed)  # same head init and dropout stream for pretrained and scratch runs
    model = task.build(encoder, cfg.head.settings()).to(rt.device)
    pad_id = tokenizer.token_to_id(PAD)
    fitted = fit(task, model, train, val, pad_id, cfg, rt)
    model.load_state_dict(fitted.best.state)
    results = summarize(task, cfg, fitted, train, val, test)
    if test is not None:
        results.update(measure_test(task, model, train, test, pad_id, cfg, rt))
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.save_checkpoint:
        info = {**task.info(), **head_info(model, cfg), "max_seq_len": max_len, "stride": cfg.data.stride,
                "text_field": cfg.data.text_field, "text_pair_field": cfg.data.text_pair_field,
                "label_field": cfg.data.label_field, "tokens_field": cfg.data.tokens_field,
                "tags_field": cfg.data.tags_field}
        results["checkpoint"] = str(save_finetuned(out_dir, fitted.best.metrics["step"], model.cpu(), tokenizer,
                                                   to_yaml(to_dict(cfg)), info))
    results["seconds"] = round(time.monotonic() - started, 1)
    results["history"] = fitted.history
    write_text_atomic(out_dir / "results.json", json.dumps(results, indent=2), what="the fine-tuning results")
    return results


def head_info(model: nn.Module, cfg: FinetuneConfig) -> dict[str, Any]:
    """The head options as built (transform "auto" resolved for this encoder)."""
    return {"pooling": getattr(model, "pooling", cfg.head.pooling),
            "transform": getattr(model, "transform_kind", "none"), "dropout": cfg.head.dropout}


def summarize(task: Task, cfg: FinetuneConfig, fitted: Fitted, train: Encoded, val: Encoded,
              test: Encoded | None) -> dict[str, Any]:
    """The keys every results.json has (test metrics None until measured)."""
    best = fitted.best.metrics
    trained = fitted.steps / fitted.steps_per_epoch * train.examples  # examples seen in training
    results: dict[str, Any] = {f"validation_{k}": best[k] for k in task.metric_names}
    results.update({f"test_{k}": None for k in task.metric_names})
    results.update({
        "task": task.name, "init_from": cfg.init_from, "architecture_from": cfg.architecture_from or None,
        "labels": task.labels, "num_train": train.examples, "num_validation": val.examples,
        "num_test": test.examples if test is not None else 0,
        "best_step": best["step"], "best_epoch": round(best["epoch"], 3), "steps": fitted.steps,
        "stopped_early": fitted.stopped_early,
        "selection_metric": f"validation_{task.score_name}" + (" (lowest)" if task.lower_is_better else " (highest)"),
        "train_seconds": round(fitted.train_seconds, 2),
        "train_examples_per_s": round(trained / fitted.train_seconds, 2) if fitted.train_seconds > 0 else None,
    })
    if train.words is not None:
        results.update({"num_train_rows": len(train.rows), "num_validation_rows": len(val.rows),
                        "num_test_rows": len(test.rows) if test is not None else 0,
                        "untokenized_words": sum(s.words.untokenized_words for s in (train, val, test)
                                                 if s is not None and s.words is not None)})
    return results


def measure_test(task: Task, model: nn.Module, train: Encoded, test: Encoded, pad_id: int, cfg: FinetuneConfig,
                 rt: Runtime) -> dict[str, Any]:
    """Test metrics of the best state, the baselines, and the inference throughput."""
    started = time.monotonic()
    pred = predict_split(task, model, test, pad_id, cfg.train.eval_batch_size, rt.device, rt.autocast)
    seconds = time.monotonic() - started
    out: dict[str, Any] = {f"test_{k}": v for k, v in task.metrics(test, pred).items()}
    out.update(task.baselines(train, test))
    out["inference_examples_per_s"] = round(test.examples / seconds, 2) if seconds > 0 else None
    return out
