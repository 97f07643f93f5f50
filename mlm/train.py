"""Pretraining loop: `python -m mlm.train --config configs/base.yaml [key.sub=value ...]`.

Plain functions rather than a Trainer class: `lr_at` (schedule), `train_step` (one
optimizer step over gradient-accumulated micro-batches), `evaluate` (masked loss and
accuracy on the validation split), `train` (the loop). The same loop runs on one CPU or on
N GPUs under torchrun: distributed is a property of the run, not a separate code path.

Reproducibility by construction: the global batch of step `s` is a pure function of
(seed, s) — which blocks (a per-epoch permutation) and which masks (a generator seeded with
(seed, s)) — so resuming is arithmetic, never a replay of the data, and a run on N ranks
sees exactly the batches of a single-process run with the same global batch size.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from mlm import checkpoint as ckpt_io
from mlm.collate import MLMCollator
from mlm.config import Config, ModelConfig, TrainConfig, config_to_dict, load_config
from mlm.data import BlockDataset, epoch_permutation, prepare_data
from mlm.errors import UserError, run_cli
from mlm.model import MLMModel
from mlm.tokenizer import PAD, special_token_ids

import yaml


# ---------------------------------------------------------------- distributed / device

@dataclass(frozen=True)
class Runtime:
    """Where this process runs: device, rank, world size, and the numeric precision."""
    device: torch.device
    rank: int
    world_size: int
    local_rank: int
    precision: str  # fp32 | bf16 | fp16

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 dot products (AVX512-BF16 or AMX), where autocast pays off."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def setup_runtime(cfg: TrainConfig) -> Runtime:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    want = cfg.device
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device=cuda but no CUDA device is available; use train.device=cpu or auto")
    if want == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        device = torch.device("cpu")
        if cfg.num_threads > 0:
            torch.set_num_threads(cfg.num_threads)
    precision = cfg.precision
    if precision == "auto":
        if device.type == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            precision = "bf16" if cpu_supports_bf16() else "fp32"
    if world_size > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    return Runtime(device, rank, world_size, local_rank, precision)


def batch_plan(cfg: TrainConfig, world_size: int) -> tuple[int, int]:
    """(micro_batch_size, accumulation_steps) with global = micro × accumulation × world size."""
    micro = cfg.micro_batch_size or cfg.batch_size // world_size
    if micro <= 0 or cfg.batch_size % (micro * world_size):
        raise UserError(
            f"train.batch_size ({cfg.batch_size}) must equal train.micro_batch_size ({micro}) × accumulation "
            f"× world size ({world_size}); {cfg.batch_size} is not divisible by {micro} × {world_size} = "
            f"{micro * world_size}")
    return micro, cfg.batch_size // (micro * world_size)


# ---------------------------------------------------------------- schedule / optimizer

def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to `lr`, then cosine or linear decay to `lr * min_lr_ratio` at max_steps."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "linear":
        return floor + (cfg.lr - floor) * (1.0 - progress)
    return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with no weight decay on biases, norms and embeddings' 1-D params (vectors)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    fused = device.type == "cuda"
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=fused)


# ---------------------------------------------------------------- batches

class GlobalBatches:
    """The masked global batch of any step, as a pure function of (seed, step): O(1) resume.

    Sample position p of the endless stream is block `perm_e[p % n]` of epoch e = p // n.
    Every rank builds the same global batch (same blocks, same masks) and keeps its slice,
    so N ranks train on exactly what one process would with the same global batch.
    """

    def __init__(self, dataset: BlockDataset, collator: MLMCollator, batch_size: int, seed: int):
        if len(dataset) == 0:
            raise UserError("the training split has no blocks: the corpus is smaller than one block "
                            "(data.seq_len tokens); add text or lower data.seq_len")
        self.dataset, self.collator, self.batch_size, self.seed = dataset, collator, batch_size, seed
        self._perm_epoch, self._perm = -1, np.empty(0, dtype=np.int64)

    def _indices(self, step: int) -> np.ndarray:
        n = len(self.dataset)
        positions = np.arange(step * self.batch_size, (step + 1) * self.batch_size, dtype=np.int64)
        out = np.empty_like(positions)
        for epoch in np.unique(positions // n):  # one epoch, or two at a boundary
            in_epoch = positions // n == epoch
            out[in_epoch] = self._permutation(int(epoch))[positions[in_epoch] % n]
        return out

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm_epoch, self._perm = epoch, epoch_permutation(len(self.dataset), self.seed, epoch)
        return self._perm

    def epoch_of(self, step: int) -> float:
        return step * self.batch_size / len(self.dataset)

    def get(self, step: int) -> dict[str, torch.Tensor]:
        blocks = self.dataset[self._indices(step)]  # (batch, seq)
        rng = np.random.default_rng([self.seed, step])
        return without_full_mask(self.collator(blocks, generator=rng))


def without_full_mask(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop an all-ones attention_mask (packed blocks): the model then takes its dense path
    without checking the mask on the device (a host sync and a graph break under compile)."""
    mask = batch.get("attention_mask")
    if mask is not None and bool(mask.all()):
        batch = {k: v for k, v in batch.items() if k != "attention_mask"}
    return batch


def split_for_rank(batch: dict[str, torch.Tensor], rank: int, world: int, micro: int,
                   accum: int) -> list[dict[str, torch.Tensor]]:
    """This rank's `accum` micro-batches of `micro` rows from the global batch."""
    rows = micro * accum
    mine = {k: v[rank * rows:(rank + 1) * rows] for k, v in batch.items()}
    return [{k: v[i * micro:(i + 1) * micro] for k, v in mine.items()} for i in range(accum)]


# ---------------------------------------------------------------- step / eval

@dataclass
class StepResult:
    loss: float  # mean masked cross-entropy over the global batch
    grad_norm: float
    masked_tokens: int
    skipped: bool


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, micro_batches: list[dict[str, torch.Tensor]],
               rt: Runtime, grad_clip: float, scaler: torch.amp.GradScaler | None = None,
               poison: bool = False) -> StepResult:
    """One optimizer step over gradient-accumulated micro-batches.

    Each micro-batch contributes (sum of its masked losses) / (masked tokens in the global
    batch), so accumulation and data parallelism give the same gradient as one big batch.
    A step with a non-finite loss or gradient is skipped (no update) and reported.
    """
    count = torch.tensor(float(sum(int((b["labels"] != -100).sum()) for b in micro_batches)), device=rt.device)
    if rt.distributed:
        torch.distributed.all_reduce(count)
    denom = count.clamp(min=1.0)
    # DDP averages gradients over ranks; scale so the average is the global-batch mean.
    scale = float(rt.world_size)
    total = torch.zeros((), device=rt.device)
    for i, mb in enumerate(micro_batches):
        mb = {k: v.to(rt.device, non_blocking=True) for k, v in mb.items()}
        sync = i == len(micro_batches) - 1
        ctx = model.no_sync() if (rt.distributed and not sync and hasattr(model, "no_sync")) else contextlib.nullcontext()
        with ctx:
            with rt.autocast():
                out = model(mb["input_ids"], attention_mask=mb.get("attention_mask"), labels=mb["labels"],
                            reduction="sum")
            loss = out.loss.float() / denom
            if poison:
                loss = loss * float("nan")
            backward_loss = loss * scale
            (scaler.scale(backward_loss) if scaler is not None else backward_loss).backward()
        total += loss.detach()
    if rt.distributed:
        torch.distributed.all_reduce(total)
    if scaler is not None:
        scaler.unscale_(optimizer)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
    finite = bool(torch.isfinite(total)) and bool(torch.isfinite(grad_norm))
    if scaler is not None:
        if finite:
            scaler.step(optimizer)
        scaler.update()
    elif finite:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(float(total), float(grad_norm), int(count), not finite)


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset: BlockDataset, collator: MLMCollator, rt: Runtime,
             batch_size: int, max_batches: int, seed: int) -> dict[str, float]:
    """Masked loss, masked-token accuracy and perplexity with a fixed masking seed."""
    was_training = model.training
    model.eval()
    n = len(dataset)
    n_batches = math.ceil(n / batch_size)
    if max_batches:
        n_batches = min(n_batches, max_batches)
    # Each rank evaluates a strided share of the batches; the sums are reduced at the end.
    loss_sum = torch.zeros((), dtype=torch.float64, device=rt.device)
    correct = torch.zeros((), dtype=torch.float64, device=rt.device)
    count = torch.zeros((), dtype=torch.float64, device=rt.device)
    for b in range(rt.rank, n_batches, rt.world_size):
        idx = np.arange(b * batch_size, min(n, (b + 1) * batch_size))
        batch = without_full_mask(collator(dataset[idx], generator=np.random.default_rng([seed, b])))
        batch = {k: v.to(rt.device) for k, v in batch.items()}
        with rt.autocast():
            out = model(batch["input_ids"], attention_mask=batch.get("attention_mask"), labels=batch["labels"],
                        reduction="sum")
        loss_sum += out.loss.double()
        correct += (out.logits.argmax(-1) == out.target).sum().double()
        count += out.target.numel()
    if rt.distributed:
        for t in (loss_sum, correct, count):
            torch.distributed.all_reduce(t)
    model.train(was_training)
    c = max(1.0, float(count))
    loss = float(loss_sum) / c
    return {"eval_loss": loss, "eval_accuracy": float(correct) / c,
            "eval_perplexity": math.exp(min(loss, 50.0)), "eval_masked_tokens": int(count)}


# ---------------------------------------------------------------- state

def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state(legacy=False)  # plain types only: loadable with weights_only=True
    np_state["state"] = {"key": np_state["state"]["key"].tolist(), "pos": int(np_state["state"]["pos"])}
    state = {"python": random.getstate(), "numpy": np_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    pystate = state["python"]
    random.setstate((pystate[0], tuple(pystate[1]), pystate[2]))
    np_state = dict(state["numpy"])
    np_state["state"] = {"key": np.asarray(np_state["state"]["key"], dtype=np.uint32),
                         "pos": np_state["state"]["pos"]}
    np.random.set_state(np_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The plain MLMModel under DDP / torch.compile wrappers (saved without key surgery)."""
    while True:
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    return get_model_state_dict(unwrapped(model), options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
    return get_optimizer_state_dict(unwrapped(model), optimizer,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    set_optimizer_state_dict(unwrapped(model), optimizer, state, options=StateDictOptions(full_state_dict=True))


# ---------------------------------------------------------------- logging

class MetricsLog:
    """Appends one JSON object per event to metrics.jsonl (rank 0 only); TensorBoard optional."""

    def __init__(self, path: Path, enabled: bool, tensorboard: bool):
        self.path, self.enabled, self.tb = path, enabled, None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(path.parent / "tensorboard"))
            except ImportError:
                print("warning: log.tensorboard=true but tensorboard is not installed; "
                      "pip install tensorboard", file=sys.stderr)

    def write(self, event: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(event) + "\n")
        if self.tb is not None:
            for k, v in event.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, event["step"])

    def truncate_after(self, step: int) -> None:
        """On resume, drop events logged after the checkpoint, so the log reads as one run."""
        if not self.enabled or not self.path.is_file():
            return
        kept = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


class StopSignal:
    """SIGTERM/SIGINT set a flag; the loop finishes its step, checkpoints and exits 0."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignal":
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = signal.Signals(signum).name

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------- the run

def model_config_for(cfg: Config, tokenizer) -> ModelConfig:
    """The model config with vocabulary facts filled from the tokenizer (one source of special ids)."""
    mc = ModelConfig(**{**asdict(cfg.model)})
    vocab = tokenizer.get_vocab_size()
    if mc.vocab_size == 0:
        mc.vocab_size = vocab
    elif mc.vocab_size < vocab:
        raise UserError(f"model.vocab_size ({mc.vocab_size}) is smaller than the tokenizer's vocabulary ({vocab})")
    mc.pad_token_id = tokenizer.token_to_id(PAD)
    mc.special_token_ids = special_token_ids(tokenizer)
    return mc


def build_collator(cfg: Config, tokenizer) -> MLMCollator:
    c = cfg.collate
    return MLMCollator.from_tokenizer(tokenizer, mlm_probability=c.mlm_probability,
                                      mask_replace_prob=c.mask_replace_prob, random_replace_prob=c.random_replace_prob,
                                      strategy=c.strategy, exact_count=c.exact_count)


# Keys that only shape the initial weights: a checkpoint written before one existed resumes.
_INIT_ONLY_KEYS = ("init_std", "scaled_residual_init")


def _check_resumable(saved: dict[str, Any], current: ModelConfig, where: Path) -> None:
    now = asdict(current)
    saved = {**{k: now[k] for k in _INIT_ONLY_KEYS}, **saved}  # absent from older checkpoints
    diffs = [k for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]
    if diffs:
        k = diffs[0]
        raise UserError(f"{where}: cannot resume, the model config changed (model.{k}: checkpoint has "
                        f"{saved.get(k)!r}, config now has {now.get(k)!r}); use a new output_dir or restore the config")


def train(cfg: Config, poison_steps: Sequence[int] = ()) -> dict[str, Any]:
    """Run (or resume) pretraining as configured; returns the final metrics."""
    rt = setup_runtime(cfg.train)
    out_dir = Path(cfg.output_dir)
    ckpt_root = out_dir / "checkpoints"
    micro, accum = batch_plan(cfg.train, rt.world_size)
    if rt.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    # Data: rank 0 prepares (or validates the cache), the others wait and then read it.
    if rt.distributed and not rt.is_main:
        torch.distributed.barrier()
    prepared = prepare_data(cfg)
    if rt.distributed and rt.is_main:
        torch.distributed.barrier()
    tokenizer = prepared.tokenizer
    model_cfg = model_config_for(cfg, tokenizer)
    if prepared.train.seq_len > model_cfg.max_seq_len:
        raise UserError(f"data.seq_len ({prepared.train.seq_len}) exceeds model.max_seq_len ({model_cfg.max_seq_len})")
    resolved = config_to_dict(cfg)
    resolved["model"] = asdict(model_cfg)
    run_config_yaml = yaml.safe_dump(resolved, sort_keys=False)
    if rt.is_main:
        (out_dir / "config.yaml").write_text(run_config_yaml, encoding="utf-8")

    torch.manual_seed(cfg.train.seed)
    random.seed(cfg.train.seed)
    np.random.seed(cfg.train.seed)
    model = MLMModel(model_cfg).to(rt.device)
    collator = build_collator(cfg, tokenizer)
    batches = GlobalBatches(prepared.train, collator, cfg.train.batch_size, cfg.train.seed)
    log = MetricsLog(out_dir / "metrics.jsonl", rt.is_main, cfg.log.tensorboard)

    start_step, bad_in_a_row, state = 0, 0, None
    resume_from = ckpt_io.latest_checkpoint(ckpt_root)
    if resume_from is not None:
        _check_resumable(ckpt_io.load_model_config(resume_from), model_cfg, resume_from)
        state = ckpt_io.load_trainer_state(resume_from)
        model.load_state_dict(ckpt_io.load_model_weights(resume_from))

    # Wrap before building the optimizer: FSDP2 replaces parameters with sharded DTensors.
    train_model: torch.nn.Module = model
    if rt.distributed:
        if cfg.train.fsdp:
            from torch.distributed.fsdp import fully_shard
            for block in model.layers:
                fully_shard(block)
            fully_shard(model)
        else:
            train_model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[rt.local_rank] if rt.device.type == "cuda" else None)
    optimizer = build_optimizer(model, cfg.train, rt.device)
    scaler = torch.amp.GradScaler(rt.device.type) if rt.precision == "fp16" else None

    if state is not None:
        load_full_optimizer_state(model, optimizer, state["optimizer"])
        if scaler is not None and "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        start_step = int(state["step"])
        bad_in_a_row = int(state.get("bad_in_a_row", 0))
        set_rng_state(state["rng"])
        log.truncate_after(start_step)
        if rt.is_main:
            print(f"resuming from {resume_from} at step {start_step}", file=sys.stderr)
    if cfg.train.compile:
        train_model = torch.compile(train_model, dynamic=True)

    def save(step: int) -> None:
        model_state = full_model_state(model)
        opt_state = full_optimizer_state(model, optimizer)
        if not rt.is_main:
            return
        trainer_state = {"step": step, "optimizer": opt_state, "rng": rng_state(),
                         "bad_in_a_row": bad_in_a_row, "samples_seen": step * cfg.train.batch_size}
        if scaler is not None:
            trainer_state["scaler"] = scaler.state_dict()
        ckpt_io.save_checkpoint(ckpt_root, step, model_state, asdict(model_cfg), tokenizer.to_str(),
                                run_config_yaml, trainer_state, keep=cfg.checkpoint.keep)

    def run_eval(step: int, max_batches: int) -> dict[str, float]:
        metrics = evaluate(train_model, prepared.validation, collator, rt, cfg.eval.batch_size,
                           max_batches, cfg.eval.seed)
        log.write({"step": step, **metrics})
        return metrics

    has_val = len(prepared.validation) > 0
    if has_val:  # two batches before step 0: a broken eval fails in seconds, not hours
        evaluate(train_model, prepared.validation, collator, rt, cfg.eval.batch_size, 2, cfg.eval.seed)

    tokens_per_step = cfg.train.batch_size * prepared.train.seq_len
    bar = None
    if rt.is_main and cfg.log.progress:
        from tqdm import tqdm
        bar = tqdm(total=cfg.train.max_steps, initial=start_step, desc="train", dynamic_ncols=True,
                   disable=None)
    started = time.monotonic()
    last_metrics: dict[str, Any] = {}
    step = start_step
    window_t, window_tokens = time.monotonic(), 0
    stop_reason = "max_steps"
    train_model.train()
    with StopSignal() as stop:
        while step < cfg.train.max_steps:
            lr = lr_at(step, cfg.train)
            for g in optimizer.param_groups:
                g["lr"] = lr
            micro_batches = split_for_rank(batches.get(step), rt.rank, rt.world_size, micro, accum)
            result = train_step(train_model, optimizer, micro_batches, rt, cfg.train.grad_clip, scaler,
                                poison=step in poison_steps)
            step += 1
            window_tokens += tokens_per_step
            if result.skipped:
                bad_in_a_row += 1
                if rt.is_main:
                    print(f"warning: step {step}: non-finite loss or gradient (loss={result.loss}, "
                          f"grad_norm={result.grad_norm}); step skipped "
                          f"({bad_in_a_row}/{cfg.train.max_bad_steps} in a row)", file=sys.stderr)
                log.write({"step": step, "skipped": True, "train_loss": None})
                if bad_in_a_row >= cfg.train.max_bad_steps:
                    raise UserError(f"stopping: {bad_in_a_row} consecutive non-finite steps (train.max_bad_steps="
                                    f"{cfg.train.max_bad_steps}); last good checkpoint is kept in {ckpt_root}. "
                                    "Lower train.lr or use train.precision=bf16/fp32")
            else:
                bad_in_a_row = 0
            if step % cfg.train.log_every == 0 or step == cfg.train.max_steps or step == start_step + 1:
                now = time.monotonic()
                tps = window_tokens / max(now - window_t, 1e-9)
                window_t, window_tokens = now, 0
                if not result.skipped:
                    last_metrics = {"step": step, "train_loss": result.loss, "lr": lr,
                                    "grad_norm": result.grad_norm, "tokens_per_s": tps,
                                    "epoch": batches.epoch_of(step)}
                    log.write(last_metrics)
                if bar is not None:
                    bar.set_postfix(loss=f"{result.loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tps:,.0f}")
            if bar is not None:
                bar.update(1)
            if has_val and cfg.eval.every and step % cfg.eval.every == 0 and step != cfg.train.max_steps:
                run_eval(step, cfg.eval.batches)
            if cfg.checkpoint.every and step % cfg.checkpoint.every == 0 and step != cfg.train.max_steps:
                save(step)
            reason = stop.requested or (
                "max_time" if cfg.train.max_time and time.monotonic() - started > cfg.train.max_time else None)
            if rt.distributed:  # every rank must leave the loop at the same step
                flag = torch.tensor([0 if reason is None else 1 if reason == "max_time" else 2], device=rt.device)
                torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
                reason = {0: None, 1: "max_time"}.get(int(flag), reason or "SIGTERM")
            if reason is not None:
                stop_reason = reason
                break
    if bar is not None:
        bar.close()
    final: dict[str, Any] = dict(last_metrics)
    if stop_reason == "max_steps" and has_val:
        final.update(run_eval(step, cfg.eval.batches))
    save(step)
    final.update({"step": step, "stopped": stop_reason, "seconds": time.monotonic() - started})
    if rt.is_main:
        (out_dir / "final_metrics.json").write_text(json.dumps(final, indent=2), encoding="utf-8")
        print(json.dumps({k: final[k] for k in ("step", "stopped", "train_loss", "eval_loss", "eval_accuracy")
                          if k in final}), file=sys.stderr)
    if rt.distributed:
        torch.distributed.barrier()
    return final


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mlm.train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", "-c", help="YAML config (e.g. configs/base.yaml)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.lr=3e-4")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    try:
        train(cfg)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    run_cli(main)
