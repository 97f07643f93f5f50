"""Where a process runs: device, precision, rank and world size, set once at the start of a run.

Distributed is a property of the run, not a code path: `torchrun` sets RANK / WORLD_SIZE /
LOCAL_RANK, `setup_runtime` joins the process group, and the same loop runs on one CPU or on N
GPUs. Everything here is read by the trainer, fine-tuning, scoring and export alike.
"""
from __future__ import annotations

import contextlib
import os
import random
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from mlm.errors import UserError

Precision = Literal["fp32", "bf16", "fp16"]
T = TypeVar("T")


@dataclass(frozen=True)
class Runtime:
    """Where this process runs: device, rank, world size, and the numeric precision."""
    device: torch.device
    rank: int
    world_size: int
    local_rank: int
    precision: Precision

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

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def raise_together(self, error: UserError | None) -> None:
        """Raise `error` on every rank when any rank has one (a collective: all ranks must call it), so
        every process leaves with the same one-line message and none waits in a later collective."""
        if self.distributed:
            messages: list[str | None] = [None] * self.world_size
            dist.all_gather_object(messages, None if error is None else str(error))
            first = next((m for m in messages if m is not None), None)
            if first is not None:
                raise UserError(first)
        elif error is not None:
            raise error

    def main_first(self, work: Callable[[], T]) -> T | None:
        """Run `work` on rank 0 while the others wait; a UserError there is raised on every rank.
        Returns its result on rank 0, None elsewhere."""
        result, error = None, None
        if self.is_main:
            try:
                result = work()
            except UserError as err:
                error = err
        self.raise_together(error)
        return result

    def broadcast_float(self, value: float) -> float:
        """Rank 0's `value` on every rank (a collective)."""
        if not self.distributed:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.broadcast(tensor, src=0)
        return float(tensor.item())

    def any_rank(self, flag: bool) -> bool:
        """True on every rank when `flag` is True on at least one (a collective: all ranks must call it)."""
        if not self.distributed:
            return flag
        value = torch.tensor([1 if flag else 0], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 dot products (AVX512-BF16 or AMX), where autocast pays off."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def setup_runtime(device: str = "auto", precision: str = "auto", num_threads: int = 0,
                  deterministic: bool = False) -> Runtime:
    """Pick the device and precision, join the process group under torchrun, set CPU threads."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    want = "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    if want == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device=cuda but no CUDA device is available; use train.device=cpu or auto")
    if want == "cuda":
        torch.cuda.set_device(local_rank)
        chosen = torch.device("cuda", local_rank)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        chosen = torch.device("cpu")
        if num_threads > 0:
            torch.set_num_threads(num_threads)
    if precision == "auto":
        if chosen.type == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            precision = "bf16" if cpu_supports_bf16() else "fp32"
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if chosen.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, device_id=chosen if chosen.type == "cuda" else None)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    return Runtime(chosen, rank, world_size, local_rank, precision)  # type: ignore[arg-type]


def seed_everything(seed: int) -> None:
    """Seed torch, numpy's legacy global generator and Python's `random` (model init, dropout)."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def shutdown() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_initialized():
        dist.destroy_process_group()


class StopSignal:
    """SIGTERM/SIGINT set a flag; the loop finishes its step, checkpoints and exits 0 (preemption)."""

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
