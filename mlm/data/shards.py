"""The cache folder's files: block shards written atomically, and index.json / progress.json.

A prepare of a large corpus takes hours and may be killed at any moment, so nothing on disk may
ever look finished when it is not: a shard is written as `*.bin.tmp` and renamed when full,
index.json (the only proof of a complete cache) is written last, and progress.json records
enough (finished shards with their sha256, the partial shard's length, the unpacked token tail)
for the next run to continue byte-identically.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

FORMAT_VERSION = 1
SPLITS = ("train", "validation")
INDEX_FILE = "index.json"
PROGRESS_FILE = "progress.json"


class SplitWriter:
    """Turns one split's token stream into [CLS] + (seq_len - 1) token blocks and writes them
    into shards of `shard_blocks` blocks, each renamed into place when full."""

    def __init__(self, directory: Path, name: str, seq_len: int, dtype: np.dtype, shard_blocks: int,
                 cls_id: int):
        self.directory = directory
        self.name = name
        self.seq_len = seq_len
        self.dtype = dtype
        self.shard_blocks = shard_blocks
        self.cls_id = cls_id
        self.block_bytes = seq_len * dtype.itemsize
        self.finished: list[dict] = []
        self.leftover = np.empty(0, dtype)  # tokens not yet filling a block
        self.documents = 0
        self.tokens = 0
        self.blocks = 0
        self.shard_done = False  # a shard was finished since the last checkpoint
        self._file: Any = None
        self._hash: Any = None
        self._shard_blocks_written = 0

    def _tmp_path(self) -> Path:
        return self.directory / f"{self.name}-{len(self.finished):05d}.bin.tmp"

    def add(self, tokens: np.ndarray) -> None:
        """Append tokens to the stream; every full block is written."""
        buf = np.concatenate([self.leftover, tokens]) if self.leftover.size else tokens
        width = self.seq_len - 1
        n = buf.size // width
        if n:
            blocks = np.empty((n, self.seq_len), dtype=self.dtype)
            blocks[:, 0] = self.cls_id
            blocks[:, 1:] = buf[: n * width].reshape(n, width)
            self._write(blocks)
        self.leftover = buf[n * width:].copy()

    def _write(self, blocks: np.ndarray) -> None:
        i = 0
        while i < len(blocks):
            if self._file is None:
                self._file = open(self._tmp_path(), "wb")
                self._hash = hashlib.sha256()
                self._shard_blocks_written = 0
            take = min(self.shard_blocks - self._shard_blocks_written, len(blocks) - i)
            view = memoryview(np.ascontiguousarray(blocks[i:i + take])).cast("B")
            self._file.write(view)
            self._hash.update(view)
            self._shard_blocks_written += take
            self.blocks += take
            i += take
            if self._shard_blocks_written == self.shard_blocks:
                self._finish_shard()

    def _finish_shard(self) -> None:
        self._file.close()
        final = self.directory / f"{self.name}-{len(self.finished):05d}.bin"
        os.replace(self._tmp_path(), final)
        self.finished.append({"file": final.name, "blocks": self._shard_blocks_written,
                              "bytes": self._shard_blocks_written * self.block_bytes,
                              "sha256": self._hash.hexdigest()})
        self._file = None
        self._shard_blocks_written = 0
        self.shard_done = True

    def close(self) -> None:
        """Finish the last (partial) shard; the leftover tokens (less than a block) are dropped."""
        if self._file is not None:
            if self._shard_blocks_written:
                self._finish_shard()
            else:
                self._file.close()
                self._tmp_path().unlink(missing_ok=True)
                self._file = None

    def state(self) -> dict:
        """What progress.json records for this split (the partial shard is flushed first)."""
        if self._file is not None:
            self._file.flush()
        return {"finished": self.finished, "partial_blocks": self._shard_blocks_written if self._file else 0,
                "leftover": self.leftover.tolist(), "documents": self.documents, "tokens": self.tokens,
                "blocks": self.blocks}

    def restore(self, state: dict) -> bool:
        """Continue from a recorded `state()`; False when its files are missing or do not verify."""
        for entry in state["finished"]:
            path = self.directory / entry["file"]
            if not path.is_file() or path.stat().st_size != entry["bytes"] or sha256_file(path) != entry["sha256"]:
                return False
        self.finished = [dict(e) for e in state["finished"]]
        partial = int(state["partial_blocks"])
        tmp = self._tmp_path()
        if partial:
            want = partial * self.block_bytes
            if not tmp.is_file() or tmp.stat().st_size < want:
                return False
            with open(tmp, "r+b") as f:
                f.truncate(want)  # blocks written after the checkpoint are written again
            self._hash = hashlib.sha256()
            with open(tmp, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 22), b""):
                    self._hash.update(chunk)
            self._file = open(tmp, "ab")
            self._shard_blocks_written = partial
        else:
            tmp.unlink(missing_ok=True)
        self.leftover = np.array(state["leftover"], dtype=self.dtype)
        self.documents, self.tokens, self.blocks = int(state["documents"]), int(state["tokens"]), int(state["blocks"])
        return True

    def abandon(self) -> None:
        """Close the partial shard without finishing it (starting over)."""
        if self._file is not None:
            self._file.close()
            self._file = None


def sha256_file(path: Path) -> str:  # like mlm.checkpoint.sha256_file; that module imports torch
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def read_json(path: Path) -> dict | None:
    """A JSON object from `path`; None when missing, unreadable or not an object."""
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
        return value if isinstance(value, dict) else None
    except (OSError, ValueError):
        return None


def write_json(path: Path, obj: Any) -> None:
    """Write `obj` to `path` atomically (a reader sees the old file or the new one)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def write_progress(directory: Path, state: dict) -> None:
    """Record a checkpoint of an unfinished prepare in progress.json (the resume point)."""
    write_json(directory / PROGRESS_FILE, state)


def read_progress(directory: Path) -> dict | None:
    return read_json(directory / PROGRESS_FILE)


def load_complete_index(directory: Path, key: str, log: Callable[[str], None]) -> dict | None:
    """index.json of a finished cache for `key` whose shards are all there with the right sizes;
    None otherwise (the cache is then built again)."""
    index = read_json(directory / INDEX_FILE)
    if index is None or index.get("key") != key or not index.get("complete"):
        return None
    for split in SPLITS:
        for entry in index["splits"][split]["shards"]:
            path = directory / entry["file"]
            if not path.is_file() or path.stat().st_size != entry["bytes"]:
                log(f"warning: {path} is missing or has the wrong size; preparing the data again")
                return None
    if not (directory / "tokenizer.json").is_file():
        return None
    return index


def discard_unrecorded_writes(directory: Path) -> list[Path]:
    """Remove what a killed or failed prepare wrote after its last progress checkpoint: partial
    shards are cut back to the length progress.json records (so the next run resumes there), other
    temporary files (`*.tmp`) are deleted. Returns the files changed."""
    if not directory.is_dir():
        return []
    state = read_progress(directory) or {}
    keep: dict[str, int] = {}
    for name, writer in (state.get("writers") or {}).items():
        try:
            partial, finished = int(writer["partial_blocks"]), len(writer["finished"])
            block_bytes = int(state["block_bytes"]) if "block_bytes" in state else None
        except (KeyError, TypeError, ValueError):
            continue
        if partial:  # a progress file from before block_bytes was recorded: leave its shard alone
            keep[f"{name}-{finished:05d}.bin.tmp"] = partial * block_bytes if block_bytes else -1
    changed = []
    for path in sorted(directory.glob("*.tmp")):
        size = keep.get(path.name)
        if size is None:
            path.unlink(missing_ok=True)
            changed.append(path)
        elif 0 <= size < path.stat().st_size:
            with open(path, "r+b") as f:
                f.truncate(size)
            changed.append(path)
    return changed


def discard_cache_leftovers(cache: Path) -> list[Path]:
    """Temporary files a killed prepare left in the cache's corpus/ and tokenizers/ folders."""
    found = [p for folder in ("corpus", "tokenizers") for p in sorted((cache / folder).glob("*.tmp*"))
             if p.is_file()]
    for path in found:
        path.unlink(missing_ok=True)
    return found


def restore_writers(writers: list[SplitWriter], state: dict) -> bool:
    """Continue every split from a progress.json state; False when any does not verify."""
    try:
        return all(w.restore(state["writers"][w.name]) for w in writers)
    except (KeyError, TypeError, ValueError, OSError):
        return False
