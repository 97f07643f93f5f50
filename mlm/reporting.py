"""What a run tells the user while it goes: metrics.jsonl, TensorBoard, and progress on stderr.

Progress has two forms. On a terminal, a tqdm bar. Without one (nohup, a batch scheduler, CI),
a plain line per logging interval — step/max, loss, lr, tokens/s, elapsed, ETA — rate-limited so
a fast run does not flood the log, plus a line for each evaluation and checkpoint. A log file
then shows a run that is alive and where it is.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from mlm.storage import StorageError, append_text, write_text_atomic

MIN_SECONDS_BETWEEN_LINES = 5.0


class MetricsLog:
    """Appends one JSON object per event to metrics.jsonl (rank 0 only); TensorBoard optional.

    A failed write (disk full) is kept in `failed` instead of raised, and nothing more is written:
    the trainer raises it on every rank at the end of the step, so no rank waits in a collective.
    """

    def __init__(self, path: Path, enabled: bool, tensorboard: bool):
        self.path, self.enabled, self.tb = path, enabled, None
        self.failed: StorageError | None = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(path.parent / "tensorboard"))
            except ImportError:
                print("warning: log.tensorboard=true but tensorboard is not installed; "
                      "pip install tensorboard", file=sys.stderr)

    def write(self, event: dict[str, Any]) -> None:
        if not self.enabled or self.failed is not None:
            return
        try:
            append_text(self.path, json.dumps(event) + "\n", what="metrics")
        except StorageError as err:
            self.failed = err
            return
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
        write_text_atomic(self.path, "".join(line + "\n" for line in kept), what="metrics")


def _duration(seconds: float) -> str:
    seconds = int(max(0.0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """The trainer's progress on stderr: a tqdm bar on a terminal, plain lines otherwise."""

    def __init__(self, enabled: bool, total: int, start: int, stream: TextIO | None = None,
                 budget_seconds: float = 0.0):
        self.stream = stream or sys.stderr
        self.enabled, self.total, self.start, self.budget = enabled, total, start, budget_seconds
        self.terminal = enabled and self.stream.isatty()
        self.bar = tqdm(total=None if budget_seconds else total, initial=start, desc="train", dynamic_ncols=True,
                        file=self.stream) if self.terminal else None
        self.started = time.monotonic()
        self.last_line = -float("inf")

    def step(self, step: int, loss: float | None, lr: float, tokens_per_s: float, logged: bool,
             run_seconds: float = 0.0) -> None:
        """After each optimizer step; `logged` is True on the steps whose metrics were just logged;
        `run_seconds` is the run's time so far, against the budget (if any)."""
        if self.bar is not None:
            if logged and loss is not None:
                self.bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:,.0f}")
            self.bar.update(1)
            return
        now = time.monotonic()
        due = now - self.last_line >= MIN_SECONDS_BETWEEN_LINES or step in (self.start + 1, self.total) or (
            self.budget and run_seconds >= self.budget)
        if not (self.enabled and logged and due):
            return
        self.last_line = now
        elapsed = now - self.started
        shown = "nan" if loss is None else f"{loss:.4f}"
        if self.budget:
            where = f"step {step} ({100 * min(1.0, run_seconds / self.budget):.0f}% of the budget)"
            eta = self.budget - run_seconds
        else:
            where = f"step {step}/{self.total}"
            eta = elapsed / max(1, step - self.start) * (self.total - step)
        self.line(f"{where}  loss {shown}  lr {lr:.2e}  {tokens_per_s:,.0f} tok/s  "
                  f"elapsed {_duration(elapsed)}  eta {_duration(eta)}")

    def line(self, text: str) -> None:
        """An event line (evaluation, checkpoint, warning), above the bar on a terminal."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
