"""Pretraining: `python -m mlm.train --config configs/base.yaml [key.sub=value ...]`.

Shaped as setup → fit (litgpt): `setup` builds the runtime, data, model and optimizer and restores
the newest verified checkpoint; `fit` runs the loop (`mlm.loop.train_step`), evaluates, logs and
saves. The same loop runs on one CPU or on N GPUs under torchrun.

Reproducibility by construction: the global batch of step `s` is a pure function of (seed, s)
(`mlm.loop.MaskedBatches`), so resuming is arithmetic, never a replay of the data, and a run on N
ranks sees exactly the batches of a single-process run with the same global batch size.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.distributed.fsdp import fully_shard

from mlm import checkpoint as ckpt
from mlm.collate import MLMCollator
from mlm.config import Config, config_to_dict, load_config
from mlm.data import PreparedData, prepare_data
from mlm.errors import UserError, run_cli
from mlm.loop import MaskedBatches, batch_plan, build_collator, eval_collator, evaluate, split_for_rank, train_step
from mlm.model import MLMModel, ModelConfig
from mlm.optim import BudgetClock, build_optimizer, lr_at, lr_at_fraction, set_lr
from mlm.reporting import MetricsLog, Progress
from mlm.runtime import Runtime, StopSignal, seed_everything, setup_runtime, shutdown
from mlm.schema import to_yaml
from mlm.storage import format_bytes, free_bytes, remove_leftovers, require_writable, write_text_atomic
from mlm.warmstart import warm_start


@dataclass
class TrainState:
    """The loop's own counters, saved in every checkpoint (Stateful)."""
    step: int = 0
    bad_in_a_row: int = 0
    elapsed_seconds: float = 0.0  # wall time of the loop so far, earlier sessions included (the budget clock)

    def state_dict(self, batch_size: int) -> dict[str, Any]:
        return {"step": self.step, "bad_in_a_row": self.bad_in_a_row, "samples_seen": self.step * batch_size,
                "elapsed_seconds": self.elapsed_seconds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.bad_in_a_row = int(state.get("bad_in_a_row", 0))
        self.elapsed_seconds = float(state.get("elapsed_seconds", 0.0))  # absent before budgets existed


@dataclass
class Run:
    """Everything `fit` needs, built once by `setup`."""
    cfg: Config
    rt: Runtime
    out_dir: Path
    prepared: PreparedData
    model_cfg: ModelConfig
    run_config_yaml: str
    model: MLMModel  # the plain module: saved and loaded
    train_model: torch.nn.Module  # what steps run: DDP / compiled wrapper, or the model itself
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    collator: MLMCollator  # training masks (its rates follow collate.schedule)
    eval_collator: MLMCollator  # validation masks (fixed rates)
    batches: MaskedBatches
    log: MetricsLog
    state: TrainState
    start_step: int = 0  # the step this session started from (0, or the resumed checkpoint's)
    progress: Progress | None = None
    clock: BudgetClock | None = None  # set by fit: the loop's wall time against train.budget_minutes
    last_checkpoint_bytes: int = 0  # size of the last checkpoint written, for the free-space warning
    warned_space: bool = False

    @property
    def checkpoints(self) -> Path:
        return self.out_dir / "checkpoints"


# ---------------------------------------------------------------- setup

def setup(cfg: Config) -> Run:
    """Runtime, data (rank 0 prepares, the others wait), model, optimizer; resume if a checkpoint verifies."""
    t = cfg.train
    rt = setup_runtime(t.device, t.precision, t.num_threads, t.deterministic)
    out_dir = Path(cfg.output_dir)
    batch_plan(t.batch_size, t.micro_batch_size, rt.world_size)  # fail on the batch arithmetic before any work
    rt.main_first(lambda: require_writable(out_dir, "run output"))
    # Before any work or any write: a folder of checkpoints that do not verify stops the run here.
    resume_from = find_resume_point(rt, out_dir / "checkpoints", cfg.checkpoint.reject_unverified)
    start = warm_start(cfg, resume_from)  # train.init_from: that checkpoint's tokenizer, architecture, weights
    # Rank 0 prepares (or checks) the cache; the others then read it. An error there stops every rank.
    prepare = lambda: prepare_data(cfg, tokenizer=start.tokenizer, extend_vocab=start.extend_vocab)  # noqa: E731
    prepared = rt.main_first(prepare)
    if prepared is None:  # the other ranks, once rank 0 is done
        prepared = prepare()
    model_cfg = start.model_config(cfg.model, prepared.tokenizer)
    if prepared.train.seq_len > model_cfg.max_seq_len:
        raise UserError(f"data.seq_len ({prepared.train.seq_len}) exceeds model.max_seq_len ({model_cfg.max_seq_len})")
    resolved = config_to_dict(cfg)
    resolved["model"] = asdict(model_cfg)
    run_config_yaml = to_yaml(resolved)
    if rt.is_main:
        write_text_atomic(out_dir / "config.yaml", run_config_yaml, what="the run config")

    seed_everything(t.seed)
    model = MLMModel(model_cfg).to(rt.device)
    start.load_weights(model, prepared.tokenizer, verbose=rt.is_main)  # nothing without init_from or when resuming
    collator = build_collator(cfg.collate, prepared.tokenizer)
    trainer_state = None
    if resume_from is not None:
        ckpt.check_resumable(resume_from, asdict(model_cfg))
        trainer_state = ckpt.load_trainer_state(resume_from)
        model.load_state_dict(ckpt.load_model_weights(resume_from))
    train_model = wrap_for_distributed(model, rt, t.fsdp)  # before the optimizer: FSDP2 swaps parameters
    optimizer = build_optimizer(model, t.lr, t.weight_decay, (t.beta1, t.beta2), t.eps, rt.device)
    scaler = torch.amp.GradScaler(rt.device.type) if rt.precision == "fp16" else None
    run = Run(cfg, rt, out_dir, prepared, model_cfg, run_config_yaml, model, train_model, optimizer, scaler,
              collator, eval_collator(cfg.collate, prepared.tokenizer, cfg.eval.mlm_probability),
              MaskedBatches(prepared.train, collator, t.batch_size, t.seed, cfg.collate),
              MetricsLog(out_dir / "metrics.jsonl", rt.is_main, cfg.log.tensorboard), TrainState())
    if trainer_state is not None:
        restore(run, trainer_state)
        run.start_step = run.state.step
        if rt.is_main:
            print(f"resuming from {resume_from} at step {run.state.step}", file=sys.stderr)
    if t.compile:
        run.train_model = torch.compile(run.train_model, dynamic=True)
    return run


def find_resume_point(rt: Runtime, root: Path, reject_unverified: bool) -> Path | None:
    """Rank 0 decides (and moves unverified checkpoints aside); every rank then resumes from the same one."""
    def decide() -> Path | None:
        for leftover in remove_leftovers(root):
            print(f"note: removed {leftover}, left by an interrupted save", file=sys.stderr)
        return ckpt.resume_point(root, reject_unverified)
    found = rt.main_first(decide)
    return found if rt.is_main else ckpt.latest_checkpoint(root)


def wrap_for_distributed(model: torch.nn.Module, rt: Runtime, fsdp: bool) -> torch.nn.Module:
    """DDP, or FSDP2 `fully_shard` per block (in place), under torchrun; the model itself otherwise."""
    if not rt.distributed:
        return model
    if fsdp:
        for block in model.layers:
            fully_shard(block)
        fully_shard(model)
        return model
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[rt.local_rank] if rt.device.type == "cuda" else None)


def restore(run: Run, state: dict[str, Any]) -> None:
    """Load a checkpoint's trainer state: optimizer, scaler, loop counters, RNGs; trim the log."""
    ckpt.load_full_optimizer_state(run.model, run.optimizer, state["optimizer"])
    if run.scaler is not None and "scaler" in state:
        run.scaler.load_state_dict(state["scaler"])
    run.state.load_state_dict(state)
    ckpt.set_rng_state(state["rng"])
    run.log.truncate_after(run.state.step)


def save(run: Run) -> None:
    """A checkpoint of the current step (every rank takes part in gathering; rank 0 writes). A failed
    write raises the same one-line error on every rank."""
    model_state = ckpt.full_model_state(run.model)
    optimizer_state = ckpt.full_optimizer_state(run.model, run.optimizer)
    error = None
    if run.clock is not None:
        run.state.elapsed_seconds = run.clock.elapsed()
    if run.rt.is_main:
        warn_if_space_is_short(run)
        trainer_state = {**run.state.state_dict(run.cfg.train.batch_size), "optimizer": optimizer_state,
                         "rng": ckpt.rng_state()}
        if run.scaler is not None:
            trainer_state["scaler"] = run.scaler.state_dict()
        contents = ckpt.CheckpointContents(model_state, asdict(run.model_cfg), run.prepared.tokenizer.to_str(),
                                           run.run_config_yaml, trainer_state)
        try:
            path = ckpt.save_checkpoint(run.checkpoints, run.state.step, contents, keep=run.cfg.checkpoint.keep)
            run.last_checkpoint_bytes = sum(f.stat().st_size for f in path.iterdir())
            if run.progress is not None:
                run.progress.line(f"step {run.state.step}: saved {path} ({format_bytes(run.last_checkpoint_bytes)})")
        except UserError as err:
            error = err
    run.rt.raise_together(error)


def warn_if_space_is_short(run: Run) -> None:
    """Once per run: warn while there is still time when the next save (or the one after) may not fit."""
    free = free_bytes(run.checkpoints)
    size = run.last_checkpoint_bytes
    if run.warned_space or not size or free is None or free >= 2 * size:
        return
    run.warned_space = True
    print(f"warning: {format_bytes(free)} free for {run.checkpoints}, and the last checkpoint took "
          f"{format_bytes(size)}: the next {'save' if free < size else 'two saves'} may not fit. Free some space, "
          "lower checkpoint.keep, or move output_dir before the run fails", file=sys.stderr)


# ---------------------------------------------------------------- fit

def run_eval(run: Run, max_batches: int, log: bool = True) -> dict[str, float]:
    c = run.cfg.eval
    metrics = evaluate(run.train_model, run.prepared.validation, run.eval_collator, run.rt, c.batch_size,
                       max_batches, c.seed)
    if log:
        run.log.write({"step": run.state.step, **metrics})
        if run.progress is not None:
            run.progress.line(f"step {run.state.step}: eval loss {metrics['eval_loss']:.4f}  accuracy "
                              f"{metrics['eval_accuracy']:.4f} ± {metrics['eval_accuracy_stderr']:.4f} (masks; ± "
                              f"{metrics['eval_accuracy_stderr_blocks']:.4f} over blocks) "
                              f"({metrics['eval_masked_tokens']:,} masked tokens)")
    return metrics


def fit(run: Run) -> dict[str, Any]:
    """Train from the current step to train.max_steps (or a stop signal / train.max_time); returns the final metrics."""
    cfg, rt, state = run.cfg, run.rt, run.state
    has_val = len(run.prepared.validation) > 0
    if has_val:  # two batches before step 0: a broken eval fails in seconds, not hours
        run_eval(run, 2, log=False)
    progress = run.progress = Progress(rt.is_main and cfg.log.progress, cfg.train.max_steps, state.step,
                                       budget_seconds=60 * cfg.train.budget_minutes)
    meter = ThroughputMeter(cfg.train.batch_size * run.prepared.train.seq_len)
    started = time.monotonic()
    run.clock = BudgetClock(60 * cfg.train.budget_minutes, state.elapsed_seconds)
    last_metrics: dict[str, Any] = {}
    stop_reason = "max_steps"
    run.train_model.train()
    with StopSignal() as stop:
        while state.step < cfg.train.max_steps:
            logged = one_step(run, meter)
            if logged is not None:
                last_metrics = logged or last_metrics
            progress.step(state.step, last_metrics.get("train_loss"), last_metrics.get("lr", 0.0),
                          last_metrics.get("tokens_per_s", 0.0), logged is not None, run.clock.elapsed())
            periodic_events(run, has_val)
            reason = stop.requested or ("max_time" if cfg.train.max_time
                                        and time.monotonic() - started > cfg.train.max_time else None)
            reason = reason or ("budget" if run.clock.spent() else None)
            reason = agreed_stop_reason(rt, "error" if run.log.failed else reason)
            if reason == "error":
                rt.raise_together(run.log.failed)
            if reason is not None:
                stop_reason = reason
                break
    progress.close()
    final: dict[str, Any] = dict(last_metrics)
    if stop_reason in ("max_steps", "budget") and has_val:
        final.update(run_eval(run, cfg.eval.batches))
    save(run)
    final.update({"step": state.step, "stopped": stop_reason, "seconds": time.monotonic() - started})
    error = run.log.failed
    if rt.is_main and error is None:
        try:
            write_text_atomic(run.out_dir / "final_metrics.json", json.dumps(final, indent=2),
                              what="the final metrics")
        except UserError as err:
            error = err
    rt.raise_together(error)
    if rt.is_main:
        print(json.dumps({k: final[k] for k in ("step", "stopped", "train_loss", "eval_loss", "eval_accuracy",
                                                  "eval_accuracy_stderr")
                          if k in final}), file=sys.stderr)
    return final


class ThroughputMeter:
    """Tokens per second over the steps since the last reading."""

    def __init__(self, tokens_per_step: int):
        self.tokens_per_step, self.tokens, self.since = tokens_per_step, 0, time.monotonic()

    def add_step(self) -> None:
        self.tokens += self.tokens_per_step

    def read(self) -> float:
        now = time.monotonic()
        rate = self.tokens / max(now - self.since, 1e-9)
        self.tokens, self.since = 0, now
        return rate


def one_step(run: Run, meter: ThroughputMeter) -> dict[str, Any] | None:
    """One optimizer step; returns the logged metrics on a logging step ({} if the step was skipped), else None."""
    cfg, rt, state = run.cfg, run.rt, run.state
    t = cfg.train
    fraction, lr = schedule_point(run)
    set_lr(run.optimizer, lr)
    micro, accum = batch_plan(t.batch_size, t.micro_batch_size, rt.world_size)
    micro_batches = split_for_rank(run.batches.get(state.step, fraction), rt.rank, rt.world_size, micro, accum)
    result = train_step(run.train_model, run.optimizer, micro_batches, rt, t.grad_clip, run.scaler)
    state.step += 1
    meter.add_step()
    if result.skipped:
        note_skipped_step(run, result.loss, result.grad_norm)
    else:
        state.bad_in_a_row = 0
    if not (state.step % t.log_every == 0 or state.step == t.max_steps or state.step == run.start_step + 1):
        return None
    tokens_per_s = meter.read()
    if result.skipped:
        return {}
    metrics = {"step": state.step, "train_loss": result.loss, "lr": lr, "grad_norm": result.grad_norm,
               "tokens_per_s": tokens_per_s, "epoch": run.batches.epoch_of(state.step)}
    if t.budget_minutes:
        metrics["budget_fraction"] = fraction
    if cfg.collate.schedule.kind != "constant":
        metrics["mlm_probability"] = run.collator.mlm_probability
    run.log.write(metrics)
    return metrics


def schedule_point(run: Run) -> tuple[float, float]:
    """(fraction of training done, learning rate) before the next step: by the step, or by the share of
    train.budget_minutes spent. Every rank uses rank 0's clock, so all ranks mask and step alike."""
    t, step = run.cfg.train, run.state.step
    if not t.budget_minutes:
        return step / t.max_steps, lr_at(step, t.lr, t.warmup_steps, t.max_steps, t.schedule, t.min_lr_ratio)
    fraction = run.rt.broadcast_float(run.clock.fraction())
    return fraction, lr_at_fraction(fraction, t.lr, t.warmup_fraction, t.schedule, t.min_lr_ratio)


def note_skipped_step(run: Run, loss: float, grad_norm: float) -> None:
    """Count a non-finite step; give up after train.max_bad_steps in a row."""
    state, t = run.state, run.cfg.train
    state.bad_in_a_row += 1
    if run.rt.is_main:
        print(f"warning: step {state.step}: non-finite loss or gradient (loss={loss}, grad_norm={grad_norm}); "
              f"step skipped ({state.bad_in_a_row}/{t.max_bad_steps} in a row)", file=sys.stderr)
    run.log.write({"step": state.step, "skipped": True, "train_loss": None})
    if state.bad_in_a_row >= t.max_bad_steps:
        raise UserError(f"stopping: {state.bad_in_a_row} consecutive non-finite steps (train.max_bad_steps="
                        f"{t.max_bad_steps}); last good checkpoint is kept in {run.checkpoints}. "
                        "Lower train.lr or use train.precision=bf16/fp32")


def periodic_events(run: Run, has_val: bool) -> None:
    """Evaluation and checkpoint on their schedules (the final ones are written by `fit`)."""
    step, cfg = run.state.step, run.cfg
    if step == cfg.train.max_steps:
        return
    if has_val and cfg.eval.every and step % cfg.eval.every == 0:
        run_eval(run, cfg.eval.batches)
    if cfg.checkpoint.every and step % cfg.checkpoint.every == 0:
        save(run)


def agreed_stop_reason(rt: Runtime, reason: str | None) -> str | None:
    """Every rank must leave the loop at the same step: the strongest reason any rank has."""
    if not rt.distributed:
        return reason
    codes = {None: 0, "max_time": 1, "budget": 2, "error": 4}
    flag = torch.tensor([codes.get(reason, 3)], device=rt.device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return {0: None, 1: "max_time", 2: "budget", 4: "error"}.get(int(flag), reason or "SIGTERM")


def train(cfg: Config) -> dict[str, Any]:
    """Run (or resume) pretraining as configured; returns the final metrics."""
    return fit(setup(cfg))


# ---------------------------------------------------------------- CLI

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlm.train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", "-c", help="YAML config (e.g. configs/base.yaml)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.lr=3e-4")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    try:
        train(cfg)
    finally:
        shutdown()
    return 0


if __name__ == "__main__":
    run_cli(main)
