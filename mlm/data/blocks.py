"""Reading the prepared blocks back: random access over the shards, and the training order.

Training must resume at any step, on any number of ranks, and see exactly the batches an
uninterrupted single-process run would. So the order of blocks is pure index arithmetic:
`epoch_permutation(n, seed, epoch)` is the same on every machine and numpy version, and
`BatchPlan` turns a step number into the global batch's block indices without any state
that would have to be saved.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mlm.data.shards import INDEX_FILE, read_json
from mlm.errors import UserError

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


class BlockDataset:
    """Fixed-length token blocks stored in shard files, read by random access.

    `ds[i]` is a (seq_len,) array; `ds[idx]` with an integer array (or list/slice) is
    (len(idx), seq_len). The dtype is uint16 when the vocabulary fits, else int32.
    Memmaps are opened lazily, so the object pickles cheaply into DataLoader workers.
    """

    def __init__(self, directory: str | Path, shards: Sequence[dict], seq_len: int, dtype: Any,
                 name: str = ""):
        self.directory = Path(directory)
        self.name = name
        self.seq_len = int(seq_len)
        self.dtype = np.dtype(dtype)
        self.shards = [dict(s) for s in shards]
        counts = np.array([int(s["blocks"]) for s in self.shards], dtype=np.int64)
        self._starts = np.concatenate([np.zeros(1, np.int64), np.cumsum(counts)])
        self._maps: list[np.memmap | None] = [None] * len(self.shards)

    @classmethod
    def from_index(cls, directory: str | Path, split: str) -> "BlockDataset":
        """Open one split of a prepared cache folder (the one holding index.json)."""
        directory = Path(directory)
        index = read_json(directory / INDEX_FILE)
        if index is None or split not in index.get("splits", {}):
            raise UserError(f"{directory}: no prepared split {split!r} (missing or unreadable index.json)")
        return cls(directory, index["splits"][split]["shards"], index["seq_len"], index["dtype"], split)

    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def num_tokens(self) -> int:
        return len(self) * self.seq_len

    def __repr__(self) -> str:
        return (f"BlockDataset({self.name or self.directory}, blocks={len(self)}, seq_len={self.seq_len}, "
                f"dtype={self.dtype.name}, shards={len(self.shards)})")

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_maps"] = [None] * len(self.shards)
        return state

    def _map(self, k: int) -> np.memmap:
        mm = self._maps[k]
        if mm is None:
            n = int(self.shards[k]["blocks"])
            path = self.directory / self.shards[k]["file"]
            try:
                mm = np.memmap(path, dtype=self.dtype, mode="r", shape=(n, self.seq_len))
            except (OSError, ValueError) as err:
                raise UserError(f"{path}: cannot open shard ({err}); delete {self.directory} and "
                                "prepare again") from None
            self._maps[k] = mm
        return mm

    def __getitem__(self, index: Any) -> np.ndarray:
        n = len(self)
        if isinstance(index, (int, np.integer)):
            i = int(index)
            if i < 0:
                i += n
            if not 0 <= i < n:
                raise IndexError(f"block {index} out of range for {n} blocks")
            k = int(np.searchsorted(self._starts, i, side="right")) - 1
            return np.array(self._map(k)[i - int(self._starts[k])])
        if isinstance(index, slice):
            index = np.arange(n)[index]
        idx = np.asarray(index)
        if idx.dtype == bool or not np.issubdtype(idx.dtype, np.integer):
            if idx.size == 0:
                idx = idx.astype(np.int64)
            else:
                raise TypeError(f"BlockDataset indices must be integers, got {idx.dtype}")
        flat = idx.reshape(-1).astype(np.int64)
        flat = np.where(flat < 0, flat + n, flat)
        if flat.size and (flat.min() < 0 or flat.max() >= n):
            raise IndexError(f"block index out of range for {n} blocks")
        out = np.empty((flat.size, self.seq_len), dtype=self.dtype)
        if flat.size:
            ks = np.searchsorted(self._starts, flat, side="right") - 1
            for k in np.unique(ks):
                sel = ks == k
                out[sel] = self._map(int(k))[flat[sel] - self._starts[k]]
        return out.reshape(idx.shape + (self.seq_len,))


def _mix64(z: int) -> int:
    z &= _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """A permutation of range(n) determined by (seed, epoch) only: identical on every machine,
    platform and numpy version (splitmix64 keys in exact uint64 arithmetic, stable argsort)."""
    n = int(n)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    base = _mix64(_mix64(int(seed)) + _GOLDEN * (int(epoch) + 1))
    with np.errstate(over="ignore"):
        z = np.arange(n, dtype=np.uint64) * np.uint64(_GOLDEN) + np.uint64(base)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return np.argsort(z, kind="stable").astype(np.int64)


class BatchPlan:
    """Which blocks form the global batch of any step, as a pure function of (seed, step).

    The blocks are an endless stream of epochs, each in its own `epoch_permutation` order:
    sample position p is block `epoch_permutation(num_blocks, seed, p // num_blocks)[p % num_blocks]`,
    and step s is positions [s * batch_size, (s + 1) * batch_size). A batch may span an epoch
    boundary. Resuming at step s needs nothing but s; the current epoch's permutation is cached.
    """

    def __init__(self, num_blocks: int, batch_size: int, seed: int):
        if num_blocks <= 0:
            raise ValueError(f"num_blocks must be > 0, got {num_blocks}")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        self.num_blocks, self.batch_size, self.seed = int(num_blocks), int(batch_size), int(seed)
        self._cached_epoch, self._cached_permutation = -1, np.empty(0, dtype=np.int64)

    def indices(self, step: int) -> np.ndarray:
        """The global batch of `step`: `batch_size` block indices (int64)."""
        n = self.num_blocks
        positions = np.arange(step * self.batch_size, (step + 1) * self.batch_size, dtype=np.int64)
        out = np.empty_like(positions)
        for epoch in np.unique(positions // n):  # one epoch, or more at a boundary
            in_epoch = positions // n == epoch
            out[in_epoch] = self.permutation(int(epoch))[positions[in_epoch] % n]
        return out

    def permutation(self, epoch: int) -> np.ndarray:
        """The block order of `epoch` (the last one asked for is kept)."""
        if epoch != self._cached_epoch:
            self._cached_epoch = epoch
            self._cached_permutation = epoch_permutation(self.num_blocks, self.seed, epoch)
        return self._cached_permutation

    def epoch_of(self, step: int) -> float:
        """Epochs completed before `step` (fractional): step * batch_size / num_blocks."""
        return step * self.batch_size / self.num_blocks
