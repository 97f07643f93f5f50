"""Corpus -> tokenized fixed-length blocks on disk, and the dataset that reads them back.

`prepare_data(cfg)` reads the corpus (files, a Hugging Face `datasets` dataset, or, when neither
is given, a built-in corpus made from the Python standard library's docstrings), trains or loads
the tokenizer, and writes each split as shards of blocks:

    stream = doc tokens [SEP] doc tokens [SEP] ...      (no template special tokens)
    block  = [CLS] + the next seq_len - 1 tokens of the stream

A document longer than a block continues in the next block. No token is dropped except the
final partial block of each split; its size is reported in `stats`. Documents go to the
validation split by a hash of their text, so the split does not depend on file order or
thread count, and duplicate documents always land in the same split.

The pass is streaming (memory does not grow with the corpus), resumable (an interrupted run
continues after its last checkpoint, verifying the finished shards by size and sha256) and
cached (a re-run with the same sources, tokenizer and settings reuses the shards).
Dirty input is repaired or skipped with a counted warning naming file and line; see
`SKIP_REASONS` and `REPAIR_REASONS` and the "Dirty input policy" section of README.md.

`BlockDataset` reads the shards by random access (np.memmap); `epoch_permutation` is the
deterministic per-epoch shuffle the trainer slices into global batches and ranks.
"""
from __future__ import annotations

import ast
import bz2
import codecs
import contextlib
import gc
import glob as _glob
import gzip
import hashlib
import io
import itertools
import json
import lzma
import os
import re
import sys
import sysconfig
import time
import zlib
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
from tokenizers import Tokenizer

from mlm.errors import UserError
from mlm.tokenizer import CLS, SEP, load_tokenizer, token_id, tokenizer_hash, train_tokenizer

__all__ = ["prepare_data", "PreparedData", "BlockDataset", "epoch_permutation", "stdlib_documents",
           "format_summary", "SKIP_REASONS", "REPAIR_REASONS"]

FORMAT_VERSION = 1
SPLITS = ("train", "validation")

TEXT_EXTENSIONS = (".txt", ".text")
JSONL_EXTENSIONS = (".jsonl", ".ndjson")
JSON_EXTENSIONS = (".json",)
PARQUET_EXTENSIONS = (".parquet",)
KNOWN_EXTENSIONS = TEXT_EXTENSIONS + JSONL_EXTENSIONS + JSON_EXTENSIONS + PARQUET_EXTENSIONS
COMPRESSION_SUFFIXES = (".gz", ".gzip", ".zst", ".zstd", ".bz2", ".xz")

SKIP_REASONS = {
    "blank": "blank line or empty text",
    "too_short": "shorter than data.min_chars",
    "no_tokens": "tokenizes to no tokens",
    "malformed_json": "malformed JSON line",
    "missing_field": "record without the text field (or null)",
    "field_not_text": "text field is not a string",
    "record_too_long": "JSON line longer than data.max_record_chars",
    "empty_file": "empty file",
    "no_documents": "file has no usable document",
    "binary_file": "file looks binary (many NUL bytes)",
    "unknown_extension": "file in a directory with an unknown extension",
}
REPAIR_REASONS = {
    "undecodable_bytes": "undecodable bytes replaced by U+FFFD",
    "nul_bytes": "NUL characters removed",
    "lone_surrogates": "unpaired UTF-16 surrogates in JSON replaced by U+FFFD",
    "long_document": "document longer than data.max_chunk_chars tokenized in pieces",
    "utf16_without_bom": "decoded as UTF-16 without a byte-order mark",
    "utf16_or_32": "decoded as UTF-16/UTF-32 from its byte-order mark",
}
_SILENT = {"blank", "utf16_or_32"}  # counted, never warned about

# Tunables (module constants so tests can shrink them).
_BATCH_CHARS = 1 << 20  # characters per encode_batch call
_BATCH_PIECES = 4096
_READ_CHARS = 1 << 20  # characters per read of a text file
_CHECKPOINT_SECONDS = 60.0  # besides every finished shard
_STDLIB_DOC_CHARS = 2000
_STDLIB_MIN_CHARS = 20
_STDLIB_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "pydoc_data"}
_WARN_PER_FILE = 3
_WARN_PER_REASON = 20
_STDLIB_CORPUS_VERSION = 1

_DECODE_ERRORS = [0]  # undecodable byte sequences seen by the codec error handler below


def _count_and_replace(err: UnicodeError) -> tuple[str, int]:
    _DECODE_ERRORS[0] += 1
    return "\ufffd", err.end  # type: ignore[attr-defined]


codecs.register_error("mlm-count-replace", _count_and_replace)


def _on_checkpoint(state: dict) -> None:
    """Called after each checkpoint is written (a hook for tests that simulate interruption)."""


# ================================================================== reading the loader side


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
        index = _read_json(directory / "index.json")
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


_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


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


# ================================================================== the default corpus


def stdlib_documents(root: str | Path | None = None, max_chars: int = _STDLIB_DOC_CHARS) -> Iterator[str]:
    """English text on every machine with Python: the docstrings of the standard library's .py
    files (parsed with `ast`, never imported) and `pydoc_data.topics`, in a fixed order, split
    at paragraph boundaries into documents of at most `max_chars`, exact duplicates removed."""
    root = Path(root) if root is not None else Path(sysconfig.get_paths()["stdlib"])
    seen: set[bytes] = set()

    def emit(doc: str) -> Iterator[str]:
        for part in _split_paragraphs(doc, max_chars):
            if len(part) < _STDLIB_MIN_CHARS:
                continue
            digest = hashlib.blake2b(part.encode("utf-8", "surrogatepass"), digest_size=16).digest()
            if digest not in seen:
                seen.add(digest)
                yield part

    for path in _python_files(root):
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError, OSError, RecursionError, MemoryError):
            continue
        for doc in _docstrings(tree):
            yield from emit(doc)
    if root == Path(sysconfig.get_paths()["stdlib"]) or (root / "pydoc_data").is_dir():
        try:
            from pydoc_data.topics import topics  # a plain dict of strings
        except ImportError:
            topics = {}
        for key in sorted(topics):
            yield from emit(topics[key])


def _python_files(root: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _STDLIB_SKIP_DIRS and not d.startswith("."))
        found.extend(Path(dirpath) / f for f in sorted(filenames) if f.endswith(".py"))
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _docstrings(tree: ast.AST) -> Iterator[str]:
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                yield doc
        children: list[ast.AST] = []
        for attr in ("body", "orelse", "handlers", "finalbody"):
            value = getattr(node, attr, None)
            if isinstance(value, list):
                children.extend(c for c in value if isinstance(c, (ast.stmt, ast.excepthandler)))
        stack.extend(reversed(children))


def _split_paragraphs(text: str, max_chars: int) -> list[str]:
    text = text.strip()
    if len(text) <= max_chars:
        return [text] if text else []
    out: list[str] = []
    cur: list[str] = []
    size = 0
    for para in re.split(r"\n\s*\n", text):
        para = para.strip()
        if not para:
            continue
        if len(para) > max_chars:
            if cur:
                out.append("\n\n".join(cur))
                cur, size = [], 0
            while len(para) > max_chars:
                cut = _cut_point(para, max_chars)
                out.append(para[:cut].strip())
                para = para[cut:].strip()
            if para:
                cur, size = [para], len(para)
            continue
        if cur and size + 2 + len(para) > max_chars:
            out.append("\n\n".join(cur))
            cur, size = [], 0
        cur.append(para)
        size += len(para) + (2 if size else 0)
    if cur:
        out.append("\n\n".join(cur))
    return [o for o in out if o]


def _cut_point(buf: str, limit: int) -> int:
    """Where to cut `buf` (longer than `limit`): after the last whitespace in its first `limit`
    characters when that is past the middle, else hard at `limit`."""
    i = max(buf.rfind(" ", 0, limit), buf.rfind("\n", 0, limit), buf.rfind("\t", 0, limit))
    return i + 1 if i >= limit // 2 else limit


def _ensure_stdlib_corpus(cache: Path, log: Callable[[str], None]) -> Path:
    ver = ".".join(str(v) for v in sys.version_info[:3])
    dest = cache / "corpus" / f"stdlib-docs-v{_STDLIB_CORPUS_VERSION}-py{ver}.jsonl"
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    log(f"building the default corpus (standard library docstrings) in {dest} ...")
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    n = 0
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for doc in stdlib_documents():
            f.write(json.dumps({"text": doc}, ensure_ascii=False))
            f.write("\n")
            n += 1
    os.replace(tmp, dest)
    log(f"default corpus: {n:,} documents, {dest.stat().st_size / 1e6:.1f} MB")
    return dest


# ================================================================== sources and dirty input


@dataclass
class _Source:
    kind: str  # "file" | "hf"
    name: str  # shown in messages: the path as given/resolved, or the dataset name
    text_field: str = "text"
    size: int = 0
    mtime_ns: int = 0
    extra: dict = field(default_factory=dict)

    def fingerprint(self) -> dict:
        if self.kind == "file":
            return {"path": self.name, "size": self.size, "mtime_ns": self.mtime_ns, "field": self.text_field}
        return {"dataset": self.name, "field": self.text_field, **self.extra}


class _Report:
    """Counts dirty-input events; prints the first few of each kind per file as warnings."""

    def __init__(self, log: Callable[[str], None] | None):
        self.log = log
        self.muted = False
        self.skipped: Counter = Counter()
        self.repaired: Counter = Counter()
        self._per_file: Counter = Counter()
        self._per_reason: Counter = Counter()

    def skip(self, reason: str, where: tuple | None, detail: str = "", n: int = 1) -> None:
        if not self.muted:
            self.skipped[reason] += n
            self._warn(reason, SKIP_REASONS[reason], where, detail)

    def repair(self, reason: str, where: tuple | None, detail: str = "", n: int = 1) -> None:
        if not self.muted:
            self.repaired[reason] += n
            self._warn(reason, REPAIR_REASONS[reason], where, detail)

    def _warn(self, reason: str, text: str, where: tuple | None, detail: str) -> None:
        if self.log is None or reason in _SILENT:
            return
        key = (where[0] if where else "", reason)
        self._per_file[key] += 1
        count = self._per_file[key]
        if count <= _WARN_PER_FILE and self._per_reason[reason] < _WARN_PER_REASON:
            self._per_reason[reason] += 1
            suffix = " (skipped)" if reason in SKIP_REASONS else ""
            self.log(f"warning: {_where(where)}: {text}{suffix}{': ' + detail if detail else ''}")
        elif count == _WARN_PER_FILE + 1 and self._per_reason[reason] <= _WARN_PER_REASON:
            self._per_reason[reason] += 1
            self.log(f"warning: {key[0]}: further '{reason}' warnings not shown (all are counted in the summary)")

    def counts(self) -> dict:
        return {"skipped": dict(self.skipped), "repaired": dict(self.repaired)}

    def restore(self, counts: dict) -> None:
        self.skipped = Counter(counts.get("skipped", {}))
        self.repaired = Counter(counts.get("repaired", {}))


def _where(where: tuple | None) -> str:
    if not where:
        return "?"
    if len(where) == 1:
        return str(where[0])
    if len(where) == 2:
        return f"{where[0]}:{where[1]}"
    return f"{where[0]} ({where[2]} {where[1]})"


def _strip_compression(name: str) -> str:
    lower = name.lower()
    for suffix in COMPRESSION_SUFFIXES:
        if lower.endswith(suffix):
            return lower[: -len(suffix)]
    return lower


def _format_of(path: str) -> str:
    base = _strip_compression(os.path.basename(path))
    if base.endswith(JSONL_EXTENSIONS):
        return "jsonl"
    if base.endswith(JSON_EXTENSIONS):
        return "json"
    if base.endswith(PARQUET_EXTENSIONS):
        return "parquet"
    return "txt"


def _resolve_sources(d: Any, cache: Path, report: _Report, log: Callable[[str], None]) -> list[_Source]:
    sources: list[_Source] = []
    if not d.train_files and not d.hf_dataset:
        path = _ensure_stdlib_corpus(cache, log)
        sources.append(_file_source(path, "text"))
    seen: set[str] = set()
    cache_abs = os.path.abspath(cache)
    for entry in d.train_files:
        for path in _expand_entry(str(entry), cache_abs, report):
            key = os.path.abspath(path)
            if key not in seen:
                seen.add(key)
                sources.append(_file_source(Path(path), d.text_field))
    if d.hf_dataset:
        sources.append(_hf_source(d))
    return sources


def _file_source(path: Path, text_field: str) -> _Source:
    try:
        st = os.stat(path)
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None
    return _Source("file", os.path.abspath(path), text_field, st.st_size, st.st_mtime_ns)


def _expand_entry(entry: str, cache_abs: str, report: _Report) -> list[str]:
    text = os.path.expanduser(entry)
    if not text.strip():
        raise UserError("data.train_files: an entry is empty")
    if any(c in text for c in "*?["):
        matches = sorted(_glob.glob(text, recursive=True))
        if not matches:
            raise UserError(f"data.train_files: {entry!r} matches no files")
    else:
        if not os.path.exists(text):
            raise UserError(f"data.train_files: {entry}: no such file or directory")
        matches = [text]
    files: list[str] = []
    for m in matches:
        if os.path.isdir(m):
            found = _walk_dir(m, cache_abs, report)
            if not found and len(matches) == 1:
                raise UserError(f"data.train_files: directory {m} has no {', '.join(KNOWN_EXTENSIONS)} files "
                                "(optionally compressed)")
            files.extend(found)
        elif os.path.isfile(m):
            if not os.access(m, os.R_OK):
                raise UserError(f"{m}: cannot read (permission denied)")
            files.append(m)
        else:
            raise UserError(f"data.train_files: {m}: not a regular file")
    if not files:
        raise UserError(f"data.train_files: {entry!r} matches no readable data files")
    return files


def _walk_dir(root: str, cache_abs: str, report: _Report) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        if os.path.abspath(dirpath).startswith(cache_abs + os.sep) or os.path.abspath(dirpath) == cache_abs:
            dirnames[:] = []
            continue
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__pycache__")
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = os.path.join(dirpath, name)
            if _strip_compression(name).endswith(KNOWN_EXTENSIONS):
                found.append(path)
            else:
                report.skip("unknown_extension", (path,))
    return found


def _hf_source(d: Any) -> _Source:
    name = d.hf_dataset
    if os.path.isdir(os.path.expanduser(name)):
        folder = os.path.abspath(os.path.expanduser(name))
        files = []
        total = 0
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames.sort()
            for f in sorted(filenames):
                st = os.stat(os.path.join(dirpath, f))
                files.append([os.path.relpath(os.path.join(dirpath, f), folder), st.st_size, st.st_mtime_ns])
                total += st.st_size
        return _Source("hf", folder, d.text_field, total, 0,
                       {"folder": True, "split": d.hf_split, "files": files})
    return _Source("hf", name, d.text_field, 0, 0,
                   {"folder": False, "config": d.hf_config, "split": d.hf_split})


_MAGIC = ((b"\x1f\x8b", "gzip"), (b"\x28\xb5\x2f\xfd", "zstd"), (b"\xfd7zXZ\x00", "xz"))


def _compression_of(head: bytes) -> str | None:
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if head[:3] == b"BZh" and head[3:4] in tuple(bytes([c]) for c in b"123456789"):
        return "bz2"
    return None


def _decompressor(kind: str, raw: Any, name: str) -> Any:
    if kind == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if kind == "bz2":
        return bz2.BZ2File(raw)
    if kind == "xz":
        return lzma.LZMAFile(raw)
    try:
        import zstandard
    except ImportError:
        raise UserError(f"{name}: is zstd-compressed; reading it needs the zstandard package: "
                        "pip install zstandard") from None
    return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)


def _read_errors() -> tuple[type, ...]:
    errs: list[type] = [OSError, EOFError, zlib.error, lzma.LZMAError]
    zstd = sys.modules.get("zstandard")
    if zstd is not None and hasattr(zstd, "ZstdError"):
        errs.append(zstd.ZstdError)
    return tuple(errs)


class _Lines:
    """Lines of a decoded text stream, read in blocks: NUL removal and undecodable-byte counting
    with line numbers, and a size limit (a longer line comes in pieces; memory stays bounded)."""

    def __init__(self, stream: io.TextIOWrapper, name: str, report: _Report):
        self.stream = stream
        self.name = name
        self.report = report
        self._errors0 = _DECODE_ERRORS[0]
        self._bad = False

    def iter_lines(self, limit: int) -> Iterator[tuple[int, str, bool]]:
        """Yield (line number, text without its newline, complete). A line longer than `limit`
        comes as several pieces with the same number; only its last piece has complete=True."""
        read = self.stream.read
        carry = ""
        lineno = 1
        while True:
            chunk = read(_READ_CHARS)
            if not chunk:
                break
            if not self._bad and _DECODE_ERRORS[0] != self._errors0:
                self._bad = True
            if "\x00" in chunk or (self._bad and "\ufffd" in chunk):
                chunk = self._clean(chunk, lineno)
            lines = (carry + chunk).split("\n") if carry else chunk.split("\n")
            carry = lines.pop()
            for line in lines:
                while len(line) > limit:
                    yield lineno, line[:limit], False
                    line = line[limit:]
                yield lineno, line, True
                lineno += 1
            while len(carry) > limit:
                yield lineno, carry[:limit], False
                carry = carry[limit:]
        if carry:
            yield lineno, carry, True

    def _clean(self, chunk: str, lineno: int) -> str:
        if "\x00" in chunk:
            for i, line in enumerate(chunk.split("\n")):
                if "\x00" in line:
                    n = line.count("\x00")
                    self.report.repair("nul_bytes", (self.name, lineno + i), f"{n} removed", n)
            chunk = chunk.replace("\x00", "")
        if self._bad and "\ufffd" in chunk:
            for i, line in enumerate(chunk.split("\n")):
                if "\ufffd" in line:
                    n = line.count("\ufffd")
                    self.report.repair("undecodable_bytes", (self.name, lineno + i), f"{n} replaced", n)
        return chunk


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


class _Reader:
    """Streams (position, text piece, hash fraction, document-end flag, where) over all sources.

    A document longer than max_chunk_chars arrives as several pieces (cut at whitespace) that the
    caller concatenates without a separator; the last piece has end=True. The position (source
    index, pieces so far in that source) lets a later run skip straight back to this point.
    """

    def __init__(self, sources: list[_Source], d: Any, report: _Report, need_hash: bool):
        self.sources = sources
        self.d = d
        self.report = report
        self.need_hash = need_hash
        self.max_chars = d.max_chunk_chars
        self.min_chars = max(1, d.min_chars)
        self._base = 0
        self._pos_fn: Callable[[], int] = lambda: 0

    def bytes_done(self) -> int:
        try:
            return self._base + int(self._pos_fn())
        except (OSError, ValueError):
            return self._base

    def _hash(self, text: str) -> float:
        if not self.need_hash:
            return 1.0
        h = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
        return int.from_bytes(h, "little") / 18446744073709551616.0

    def pieces(self, start: tuple[int, int] = (0, 0)) -> Iterator[tuple]:
        s0, k0 = start
        for i, src in enumerate(self.sources):
            if i < s0:
                self._base += src.size
                continue
            gen = self._source_pieces(i, src)
            if i == s0 and k0:
                self.report.muted = True
                try:
                    for _ in range(k0):
                        next(gen)
                except StopIteration:
                    raise UserError(f"{src.name}: changed while being prepared (resume point not found); "
                                    "run again") from None
                finally:
                    self.report.muted = False
            yield from gen
            self._base += src.size
            self._pos_fn = lambda: 0

    def _source_pieces(self, i: int, src: _Source) -> Iterator[tuple]:
        k = 0
        max_chars, min_chars = self.max_chars, self.min_chars
        report = self.report
        with contextlib.ExitStack() as stack:
            try:
                docs = self._docs(src, stack)
                for where, chunks in docs:
                    if type(chunks) is str and len(chunks) <= max_chars:  # the common case: one piece
                        text = chunks.strip()
                        if not text:
                            report.skip("blank", where)
                            continue
                        if "\x00" in text:
                            n = text.count("\x00")
                            text = text.replace("\x00", "").strip()
                            report.repair("nul_bytes", where, f"{n} removed", n)
                        if len(text) < min_chars:
                            report.skip("too_short" if text else "blank", where)
                            continue
                        k += 1
                        yield i, k, text, self._hash(text), True, where
                        continue
                    u = None
                    pending = None
                    for raw in _recut(chunks, max_chars):
                        text = raw.strip()
                        if "\x00" in text:
                            n = text.count("\x00")
                            text = text.replace("\x00", "").strip()
                            report.repair("nul_bytes", where, f"{n} removed", n)
                        if not text:
                            continue
                        if pending is not None:
                            if u is None:
                                u = self._hash(pending)
                                report.repair("long_document", where)
                            k += 1
                            yield i, k, pending, u, False, where
                        pending = text
                    if pending is None:
                        report.skip("blank", where)
                        continue
                    if u is None:
                        if len(pending) < min_chars:
                            report.skip("too_short", where)
                            continue
                        u = self._hash(pending)
                    k += 1
                    yield i, k, pending, u, True, where
            except Exception as err:
                if not isinstance(err, _read_errors()):
                    raise
                detail = str(err).splitlines()[0] if str(err) else type(err).__name__
                raise UserError(f"{src.name}: cannot read it (corrupt or truncated data? {detail})") from None
        if k == 0 and not report.muted and self._nonempty:
            report.skip("no_documents", (src.name,))

    # ------------------------------------------------------------ per-format document streams

    def _docs(self, src: _Source, stack: contextlib.ExitStack) -> Iterator[tuple]:
        """Yield (where, chunks): chunks is a str (one line/record) or an iterable of raw strings
        that together form one document (a long line, a paragraph)."""
        self._nonempty = True
        if src.kind == "hf":
            return self._hf_docs(src)
        name = src.name
        try:
            raw = stack.enter_context(open(name, "rb", buffering=1 << 20))
        except OSError as err:
            raise UserError(f"{name}: cannot read ({err.strerror})") from None
        head = raw.peek(8)[:8]
        if not head:
            self._nonempty = False
            self.report.skip("empty_file", (name,))
            return iter(())
        fmt = _format_of(name)
        if head[:4] == b"PAR1":
            return self._parquet_docs(src)
        if fmt == "parquet":
            raise UserError(f"{name}: not a parquet file (no PAR1 header"
                            + ("; compressed parquet files are not supported, decompress it)" if
                               _compression_of(head) else ")"))
        compression = _compression_of(head)
        if compression:
            stream = io.BufferedReader(_decompressor(compression, raw, name), buffer_size=1 << 20)
            stack.callback(stream.close)
        else:
            stream = raw
        self._pos_fn = raw.tell
        sample = stream.peek(65536)[:65536]
        if not sample:
            self._nonempty = False
            self.report.skip("empty_file", (name,), f"empty {compression} stream")
            return iter(())
        if sample[:4] == b"PAR1":
            raise UserError(f"{name}: compressed parquet files are not supported; decompress it")
        encoding = self._encoding(sample, name)
        if encoding is None:
            self._nonempty = False
            return iter(())
        text = io.TextIOWrapper(stream, encoding=encoding, errors="mlm-count-replace", newline=None)
        text._CHUNK_SIZE = 1 << 20  # type: ignore[attr-defined]
        lines = _Lines(text, name, self.report)
        if fmt == "json" and sample.decode(encoding, "ignore").lstrip("\ufeff \t\r\n")[:1] == "[":
            return self._json_array_docs(src, text)
        if fmt in ("json", "jsonl"):
            return self._jsonl_docs(src, lines)
        if self.d.txt_documents == "paragraph":
            return self._paragraph_docs(lines)
        return self._line_docs(lines)

    def _encoding(self, sample: bytes, name: str) -> str | None:
        if sample.startswith(codecs.BOM_UTF8):
            return "utf-8-sig"
        if sample.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
            self.report.repair("utf16_or_32", (name,))
            return "utf-32"
        if sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            self.report.repair("utf16_or_32", (name,))
            return "utf-16"
        if b"\x00" in sample and len(sample) >= 16:
            even, odd = sample[0::2], sample[1::2]
            zero_even, zero_odd = even.count(0) / len(even), odd.count(0) / len(odd)
            if zero_odd > 0.6 and zero_even < 0.05:
                self.report.repair("utf16_without_bom", (name,), "little-endian")
                return "utf-16-le"
            if zero_even > 0.6 and zero_odd < 0.05:
                self.report.repair("utf16_without_bom", (name,), "big-endian")
                return "utf-16-be"
            if sample.count(0) > 0.3 * len(sample):
                self.report.skip("binary_file", (name,))
                return None
        return "utf-8"

    def _line_docs(self, lines: _Lines) -> Iterator[tuple]:
        name = lines.name
        it = lines.iter_lines(self.max_chars)
        for lineno, s, complete in it:
            if complete:
                yield (name, lineno), s
            else:  # a very long line: its pieces are read as they are consumed
                yield (name, lineno), self._rest_of_line(s, it)

    @staticmethod
    def _rest_of_line(first: str, it: Iterator[tuple[int, str, bool]]) -> Iterator[str]:
        yield first
        for _, s, complete in it:
            yield s
            if complete:
                return

    def _paragraph_docs(self, lines: _Lines) -> Iterator[tuple]:
        name = lines.name
        it = lines.iter_lines(self.max_chars)
        for lineno, s, complete in it:
            if complete and not s.strip():
                continue  # blank lines between paragraphs
            yield (name, lineno), self._paragraph(s, complete, it)

    @staticmethod
    def _paragraph(first: str, complete: bool, it: Iterator[tuple[int, str, bool]]) -> Iterator[str]:
        yield first
        if complete:
            yield "\n"
        at_line_start = complete
        for _, s, complete in it:
            if at_line_start and complete and not s.strip():
                return  # a blank line ends the paragraph
            yield s
            if complete:
                yield "\n"
            at_line_start = complete

    def _record_text(self, rec: Any, field_name: str, where: tuple) -> str | None:
        if not isinstance(rec, dict) or rec.get(field_name) is None:
            self.report.skip("missing_field", where, f"no {field_name!r}")
            return None
        text = rec[field_name]
        if not isinstance(text, str):
            self.report.skip("field_not_text", where, f"{field_name!r} is {type(text).__name__}")
            return None
        return text

    def _jsonl_docs(self, src: _Source, lines: _Lines) -> Iterator[tuple]:
        field_name = src.text_field
        name = src.name
        loads = json.loads
        it = lines.iter_lines(self.d.max_record_chars)
        for lineno, s, complete in it:
            where = (name, lineno)
            if not complete:
                for _, _, complete in it:
                    if complete:
                        break
                self.report.skip("record_too_long", where)
                continue
            if not s.strip():
                self.report.skip("blank", where)
                continue
            try:
                rec = loads(s)
            except ValueError as err:
                self.report.skip("malformed_json", where, str(err).splitlines()[0][:120])
                continue
            text = self._record_text(rec, field_name, where)
            if text is None:
                continue
            if _SURROGATE_ESCAPE.search(s) and _SURROGATE.search(text):
                text = _SURROGATE.sub("\ufffd", text)
                self.report.repair("lone_surrogates", where)
            yield where, text

    def _json_array_docs(self, src: _Source, text: io.TextIOWrapper) -> Iterator[tuple]:
        if src.size > self.d.max_record_chars:
            raise UserError(f"{src.name}: a JSON array file of {src.size:,} bytes is larger than "
                            f"data.max_record_chars ({self.d.max_record_chars:,}); convert it to JSON Lines "
                            "(one object per line)")
        try:
            data = json.load(text)
        except ValueError as err:
            raise UserError(f"{src.name}: invalid JSON ({str(err).splitlines()[0]})") from None
        if not isinstance(data, list):
            raise UserError(f"{src.name}: expected a JSON array of objects or JSON Lines")
        for i, rec in enumerate(data):
            where = (src.name, i + 1, "record")
            value = self._record_text(rec, src.text_field, where)
            if value is not None:
                if _SURROGATE.search(value):
                    value = _SURROGATE.sub("\ufffd", value)
                    self.report.repair("lone_surrogates", where)
                yield where, value

    def _parquet_docs(self, src: _Source) -> Iterator[tuple]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        name, field_name = src.name, src.text_field
        try:
            pf = pq.ParquetFile(name)
        except Exception as err:  # pyarrow raises ArrowInvalid/OSError with long messages
            raise UserError(f"{name}: not a readable parquet file ({str(err).splitlines()[0][:200]})") from None
        schema = pf.schema_arrow
        if field_name not in schema.names:
            raise UserError(f"{name}: no column {field_name!r} (columns: {', '.join(schema.names)}); "
                            "set data.text_field")
        tp = schema.field(field_name).type
        if pa.types.is_dictionary(tp):
            tp = tp.value_type
        is_text = pa.types.is_string(tp) or pa.types.is_large_string(tp) or \
            getattr(pa.types, "is_string_view", lambda t: False)(tp)
        if not is_text:
            raise UserError(f"{name}: column {field_name!r} has type {tp}, not text; set data.text_field")
        total_rows = max(1, pf.metadata.num_rows)
        row = 0
        self._pos_fn = lambda: src.size * row // total_rows
        if pf.metadata.num_rows == 0:
            self._nonempty = False
            self.report.skip("empty_file", (name,), "parquet file with no rows")
            return
        for batch in pf.iter_batches(batch_size=1024, columns=[field_name]):
            for value in batch.column(0).to_pylist():
                row += 1
                if value is None:
                    self.report.skip("missing_field", (name, row, "row"), f"null {field_name!r}")
                    continue
                yield (name, row, "row"), value

    def _hf_docs(self, src: _Source) -> Iterator[tuple]:
        try:
            import datasets
        except ImportError:
            raise UserError("data.hf_dataset needs the datasets package: pip install datasets") from None
        name, field_name, split = src.name, src.text_field, self.d.hf_split
        if src.extra.get("folder"):
            try:
                ds = datasets.load_from_disk(name)
            except Exception as err:
                raise UserError(f"{name}: not a dataset folder written by save_to_disk "
                                f"({str(err).splitlines()[0][:200]})") from None
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise UserError(f"{name}: no split {split!r} (splits: {', '.join(ds)}); set data.hf_split")
                ds = ds[split]
        else:
            try:
                ds = datasets.load_dataset(name, src.extra.get("config") or None, split=split, streaming=True)
            except Exception as err:
                raise UserError(f"data.hf_dataset {name!r}: cannot load it "
                                f"({str(err).splitlines()[0][:200] if str(err) else type(err).__name__})") from None
        columns = getattr(ds, "column_names", None)
        if columns is not None and field_name not in columns:
            raise UserError(f"{name}: no column {field_name!r} (columns: {', '.join(columns)}); set data.text_field")
        if columns is not None and hasattr(ds, "select_columns"):
            ds = ds.select_columns([field_name])
        total = len(ds) if hasattr(ds, "__len__") else 0
        row = 0
        self._pos_fn = (lambda: src.size * row // total) if total else (lambda: 0)
        it = iter(ds.iter(batch_size=1000))
        while True:
            try:
                batch = next(it)
            except StopIteration:
                break
            except Exception as err:
                raise UserError(f"data.hf_dataset {name!r}: failed while reading record {row + 1} "
                                f"({str(err).splitlines()[0][:200] if str(err) else type(err).__name__})") from None
            values = batch.get(field_name)
            if values is None:
                raise UserError(f"{name}: records have no {field_name!r} field; set data.text_field")
            for value in values:
                row += 1
                where = (name, row, "record")
                if value is None:
                    self.report.skip("missing_field", where, f"null {field_name!r}")
                elif not isinstance(value, str):
                    self.report.skip("field_not_text", where, f"{field_name!r} is {type(value).__name__}")
                else:
                    yield where, value


def _recut(chunks: Iterable[str], max_chars: int) -> Iterator[str]:
    """Re-cut the raw chunks of one document into pieces of at most max_chars, at whitespace."""
    if isinstance(chunks, str):
        chunks = (chunks,)
    parts: list[str] = []
    size = 0
    for chunk in chunks:
        parts.append(chunk)
        size += len(chunk)
        if size > max_chars:
            buf = "".join(parts)
            while len(buf) > max_chars:
                cut = _cut_point(buf, max_chars)
                yield buf[:cut]
                buf = buf[cut:]
            parts, size = [buf], len(buf)
    if size:
        yield "".join(parts)


# ================================================================== writing shards


class _SplitWriter:
    """Turns a split's token stream into blocks and writes them into shards, atomically."""

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
        self.leftover = np.empty(0, dtype)
        self.documents = 0
        self.tokens = 0
        self.blocks = 0
        self.shard_done = False  # set when a shard was finished since the last checkpoint
        self._file: Any = None
        self._hash: Any = None
        self._cur_blocks = 0

    def _tmp_path(self) -> Path:
        return self.directory / f"{self.name}-{len(self.finished):05d}.bin.tmp"

    def add(self, tokens: np.ndarray) -> None:
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
                self._cur_blocks = 0
            take = min(self.shard_blocks - self._cur_blocks, len(blocks) - i)
            view = memoryview(np.ascontiguousarray(blocks[i:i + take])).cast("B")
            self._file.write(view)
            self._hash.update(view)
            self._cur_blocks += take
            self.blocks += take
            i += take
            if self._cur_blocks == self.shard_blocks:
                self._finish_shard()

    def _finish_shard(self) -> None:
        self._file.close()
        final = self.directory / f"{self.name}-{len(self.finished):05d}.bin"
        os.replace(self._tmp_path(), final)
        self.finished.append({"file": final.name, "blocks": self._cur_blocks,
                              "bytes": self._cur_blocks * self.block_bytes, "sha256": self._hash.hexdigest()})
        self._file = None
        self._cur_blocks = 0
        self.shard_done = True

    def close(self) -> None:
        if self._file is not None:
            if self._cur_blocks:
                self._finish_shard()
            else:
                self._file.close()
                self._tmp_path().unlink(missing_ok=True)
                self._file = None

    def state(self) -> dict:
        if self._file is not None:
            self._file.flush()
        return {"finished": self.finished, "partial_blocks": self._cur_blocks if self._file else 0,
                "leftover": self.leftover.tolist(), "documents": self.documents, "tokens": self.tokens,
                "blocks": self.blocks}

    def restore(self, st: dict) -> bool:
        """Continue from a checkpoint; False when its files are missing or do not verify."""
        for entry in st["finished"]:
            path = self.directory / entry["file"]
            if not path.is_file() or path.stat().st_size != entry["bytes"] or _sha256_file(path) != entry["sha256"]:
                return False
        self.finished = [dict(e) for e in st["finished"]]
        partial = int(st["partial_blocks"])
        tmp = self._tmp_path()
        if partial:
            want = partial * self.block_bytes
            if not tmp.is_file() or tmp.stat().st_size < want:
                return False
            with open(tmp, "r+b") as f:
                f.truncate(want)
            self._hash = hashlib.sha256()
            with open(tmp, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 22), b""):
                    self._hash.update(chunk)
            self._file = open(tmp, "ab")
            self._cur_blocks = partial
        else:
            tmp.unlink(missing_ok=True)
        self.leftover = np.array(st["leftover"], dtype=self.dtype)
        self.documents, self.tokens, self.blocks = int(st["documents"]), int(st["tokens"]), int(st["blocks"])
        return True

    def abandon(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _sha256_file(path: Path) -> str:  # like mlm.checkpoint.sha256_file; that module imports torch
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


# ================================================================== prepare_data


@dataclass
class PreparedData:
    tokenizer: Tokenizer
    train: BlockDataset
    validation: BlockDataset
    stats: dict
    directory: Path  # the cache folder holding index.json, tokenizer.json and the shards


def prepare_data(cfg: Any, *, progress: bool | None = None,
                 log: Callable[[str], None] | None = None) -> PreparedData:
    """Build (or reuse) the tokenized block shards for `cfg.data`; see the module docstring."""
    d = cfg.data
    if progress is None:
        progress = bool(getattr(getattr(cfg, "log", None), "progress", True))
    log = log or _stderr
    t0 = time.perf_counter()
    _configure_threads(d.num_proc)
    cache = Path(os.path.expanduser(d.cache_dir)) if d.cache_dir else Path(cfg.output_dir) / "data"
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{cache}: cannot create the data cache folder ({err.strerror})") from None
    with _locked(cache, log):
        resolve_report = _Report(log)
        sources = _resolve_sources(d, cache, resolve_report, log)
        tok, trained, tok_path = _get_tokenizer(d, sources, cache, progress, log)
        thash = tokenizer_hash(tok)
        vocab = tok.get_vocab_size(with_added_tokens=True)
        dtype = np.dtype("<u2") if vocab <= 65536 else np.dtype("<i4")
        settings = _settings(d)
        key = _digest({"format": FORMAT_VERSION, "sources": [s.fingerprint() for s in sources],
                       "settings": settings, "tokenizer": thash, "dtype": dtype.str})
        directory = cache / f"blocks-{key}"
        index = _load_complete_index(directory, key, log)
        if index is not None:
            stats = dict(index["stats"])
            stats.update(reused=True, resumed=False, seconds=round(time.perf_counter() - t0, 3))
        else:
            index = _build(directory, key, sources, d, tok, thash, dtype, settings, resolve_report, progress, log)
            stats = dict(index["stats"])
            stats["seconds"] = round(time.perf_counter() - t0, 3)
        stats["tokenizer_trained"] = trained
        stats["tokenizer_path"] = str(directory / "tokenizer.json")
    splits = index["splits"]
    train = BlockDataset(directory, splits["train"]["shards"], index["seq_len"], index["dtype"], "train")
    val = BlockDataset(directory, splits["validation"]["shards"], index["seq_len"], index["dtype"], "validation")
    return PreparedData(tok, train, val, stats, directory)


def _stderr(msg: str) -> None:
    try:
        from tqdm import tqdm
        tqdm.write(msg, file=sys.stderr)
    except ImportError:
        print(msg, file=sys.stderr)


def _configure_threads(num_proc: int) -> None:
    """tokenizers sizes its Rust thread pool from RAYON_NUM_THREADS on first use in the process."""
    if num_proc and num_proc > 0:
        os.environ["RAYON_NUM_THREADS"] = str(num_proc)
        if num_proc == 1:
            os.environ["TOKENIZERS_PARALLELISM"] = "false"


@contextlib.contextmanager
def _locked(cache: Path, log: Callable[[str], None]) -> Iterator[None]:
    """One prepare per cache folder at a time (ranks of one job may all call prepare_data)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    with open(cache / ".lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another process preparing data in {cache} ...")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _reader_settings(d: Any) -> dict:
    """Everything that decides which documents (and which split) the reader produces."""
    return {"validation_fraction": d.validation_fraction, "text_field": d.text_field,
            "txt_documents": d.txt_documents, "min_chars": d.min_chars, "max_chunk_chars": d.max_chunk_chars,
            "max_record_chars": d.max_record_chars, "hf_split": d.hf_split, "hf_config": d.hf_config}


def _settings(d: Any) -> dict:
    return {**_reader_settings(d), "seq_len": d.seq_len, "shard_blocks": d.shard_blocks}


def _read_json(path: Path) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
        return value if isinstance(value, dict) else None
    except (OSError, ValueError):
        return None


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def _load_complete_index(directory: Path, key: str, log: Callable[[str], None]) -> dict | None:
    index = _read_json(directory / "index.json")
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


def _get_tokenizer(d: Any, sources: list[_Source], cache: Path, progress: bool,
                   log: Callable[[str], None]) -> tuple[Tokenizer, bool, Path]:
    if d.tokenizer:
        path = Path(os.path.expanduser(d.tokenizer))
        tok = load_tokenizer(path)
        trained = False
    else:
        import tokenizers
        key = _digest({"format": FORMAT_VERSION, "sources": [s.fingerprint() for s in sources],
                       "settings": _reader_settings(d), "kind": d.tokenizer_type, "vocab_size": d.vocab_size,
                       "sample_bytes": d.tokenizer_sample_bytes, "tokenizers": tokenizers.__version__})
        path = cache / "tokenizers" / f"{d.tokenizer_type}-{d.vocab_size}-{key}.json"
        trained = True
        if path.is_file():
            tok = load_tokenizer(path)
        else:
            tok = _train(d, sources, progress, log)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tok.save(str(tmp))
            os.replace(tmp, path)
    tok.no_truncation()
    tok.no_padding()
    for special in (CLS, SEP):
        try:
            token_id(tok, special)
        except UserError as err:
            raise UserError(f"{path}: {err}") from None
    return tok, trained, path


def _train(d: Any, sources: list[_Source], progress: bool, log: Callable[[str], None]) -> Tokenizer:
    from tqdm import tqdm

    budget = d.tokenizer_sample_bytes
    vf = d.validation_fraction
    estimate = sum(s.size * (4 if s.kind == "file" and _looks_compressed(s.name) else 1) for s in sources)
    fraction = min(1.0, budget / estimate) if estimate else 1.0
    report = _Report(None)  # the main pass reports dirty input; this one only counts
    seen = [0]

    def sample(frac: float, train_only: bool, show: bool = True) -> Iterator[str]:
        taken = 0
        reader = _Reader(sources, d, report, need_hash=True)
        total = min(budget, int(estimate * frac * 1.1)) if estimate else budget
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="tokenizer sample",
                  disable=not (progress and show), file=sys.stderr, leave=False) as bar:
            for _, _, text, u, _, _ in reader.pieces():
                seen[0] += 1
                if train_only and u < vf:
                    continue
                if frac < 1.0 and (u - vf) >= frac * (1.0 - vf):
                    continue
                size = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
                if taken + size > budget:
                    text = text[: budget - taken]
                    size = budget - taken
                taken += size
                bar.update(size)
                yield text
                if taken >= budget:
                    return

    log(f"training a {d.tokenizer_type} tokenizer (vocab {d.vocab_size:,}) on up to {budget:,} bytes of the corpus")
    first = list(itertools.islice(sample(fraction, True, show=False), 1))
    if not first:
        if seen[0] == 0:
            raise UserError(_no_text_message(sources, report))
        texts: Iterable[str] = sample(1.0, False)  # tiny corpus: use whatever there is
    else:
        texts = sample(fraction, True)
    return train_tokenizer(texts, d.vocab_size, d.tokenizer_type, show_progress=progress)


def _looks_compressed(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return _compression_of(f.read(8)) is not None
    except OSError:
        return False


def _no_text_message(sources: list[_Source], report: _Report, extra: Counter | None = None) -> str:
    names = [s.name for s in sources]
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    counts = Counter(report.skipped)
    if extra:
        counts.update(extra)
    why = ", ".join(f"{n} {r}" for r, n in sorted(counts.items()) if n)
    return f"no usable text in {shown}" + (f" (skipped: {why})" if why else "")


def _build(directory: Path, key: str, sources: list[_Source], d: Any, tok: Tokenizer, tok_hash: str,
           dtype: np.dtype, settings: dict, resolve_report: _Report, progress: bool,
           log: Callable[[str], None]) -> dict:
    from tqdm import tqdm

    directory.mkdir(parents=True, exist_ok=True)
    seq_len = d.seq_len
    cls_id, sep_id = token_id(tok, CLS), token_id(tok, SEP)
    writers = [_SplitWriter(directory, name, seq_len, dtype, d.shard_blocks, cls_id) for name in SPLITS]
    report = _Report(log)
    progress_path = directory / "progress.json"
    state = _read_json(progress_path)
    start = (0, 0)
    doc_has_tokens = False
    resumed = False
    if state is not None and state.get("key") == key and _restore_all(writers, state):
        start = tuple(state["position"])  # type: ignore[assignment]
        doc_has_tokens = bool(state["doc_has_tokens"])
        report.restore(state["report"])
        resumed = True
        log(f"resuming the interrupted prepare in {directory} (train {writers[0].blocks:,} blocks, "
            f"validation {writers[1].blocks:,} blocks already written)")
    else:
        for w in writers:
            w.abandon()
        writers = [_SplitWriter(directory, name, seq_len, dtype, d.shard_blocks, cls_id) for name in SPLITS]
        for stale in directory.iterdir():
            if stale.is_file():
                stale.unlink()

    vf = d.validation_fraction
    reader = _Reader(sources, d, report, need_hash=vf > 0)
    processed = _Report(log)  # events found after tokenizing (no_tokens); the reader's are in `report`
    enc_tok = Tokenizer.from_str(tok.to_str())  # a private copy: literal "[MASK]" etc. in text stay text
    enc_tok.encode_special_tokens = True
    total_bytes = sum(s.size for s in sources)
    sep = [sep_id]
    chain = itertools.chain.from_iterable
    last_checkpoint = time.monotonic()
    t_start = time.perf_counter()
    docs_here = tokens_here = 0

    def checkpoint(position: tuple[int, int], reader_counts: dict) -> None:
        nonlocal last_checkpoint
        counts = {kind: dict(Counter(reader_counts[kind]) + Counter(getattr(processed, kind)))
                  for kind in ("skipped", "repaired")}
        st = {"key": key, "position": list(position), "doc_has_tokens": doc_has_tokens,
              "report": counts, "writers": {w.name: w.state() for w in writers}}
        _write_json(progress_path, st)
        for w in writers:
            w.shard_done = False
        last_checkpoint = time.monotonic()
        _on_checkpoint(st)

    def batches() -> Iterator[tuple]:
        """Cut the piece stream into encode batches; each carries the reader position and the
        reader's counts at its end, which a checkpoint taken after it is written must record."""
        texts: list[str] = []
        metas: list[tuple] = []
        chars = 0
        for src_i, k, text, u, end, where in reader.pieces(start):
            texts.append(text)
            metas.append((1 if u < vf else 0, end, where))
            chars += len(text)
            if chars >= _BATCH_CHARS or len(texts) >= _BATCH_PIECES:
                yield texts, metas, (src_i, k), report.counts()
                texts, metas, chars = [], [], 0
        if texts:
            yield texts, metas, None, None

    def write_batch(encodings: list, metas: list[tuple]) -> None:
        nonlocal doc_has_tokens, docs_here, tokens_here
        parts: tuple[list, list] = ([], [])
        ntok = [0, 0]
        ndoc = [0, 0]
        has = doc_has_tokens
        for enc, (split, end, where) in zip(encodings, metas):
            ids = enc.ids
            if ids:
                parts[split].append(ids)
                ntok[split] += len(ids)
                has = True
            if end:
                if has:
                    parts[split].append(sep)
                    ndoc[split] += 1
                else:
                    processed.skip("no_tokens", where)
                has = False
        doc_has_tokens = has
        for s in (0, 1):
            if parts[s]:
                arr = np.fromiter(chain(parts[s]), dtype=dtype, count=ntok[s] + ndoc[s])
                writers[s].add(arr)
            writers[s].documents += ndoc[s]
            writers[s].tokens += ntok[s]
        docs_here += ndoc[0] + ndoc[1]
        tokens_here += ntok[0] + ntok[1]

    def finish(batch: tuple, future: Future) -> None:
        _, metas, position, reader_counts = batch
        write_batch(future.result(), metas)
        if position is not None and (writers[0].shard_done or writers[1].shard_done or
                                     time.monotonic() - last_checkpoint >= _CHECKPOINT_SECONDS):
            checkpoint(position, reader_counts)
        elapsed = max(1e-9, time.perf_counter() - t_start)
        bar.update(max(0, reader.bytes_done() - bar.n))
        bar.set_postfix_str(f"{docs_here / elapsed:,.0f} docs/s, {tokens_here / elapsed:,.0f} tok/s", refresh=False)

    # Pipelined: while the tokenizer's Rust threads encode batch n (without the GIL), this thread
    # writes batch n-1 and reads batch n+1, so reading and packing cost (almost) no wall time.
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlm-encode")
    try:
        with _gc_paused(), tqdm(total=total_bytes or None, unit="B", unit_scale=True, unit_divisor=1024,
                                desc="tokenize", disable=not progress, file=sys.stderr, dynamic_ncols=True) as bar:
            pending: tuple | None = None
            for batch in batches():
                future = pool.submit(_encode, enc_tok, batch[0])
                if pending is not None:
                    finish(*pending)
                pending = (batch, future)
            if pending is not None:
                finish(*pending)
            bar.update(max(0, total_bytes - bar.n))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    elapsed = time.perf_counter() - t_start

    report.skipped.update(resolve_report.skipped)
    report.skipped.update(processed.skipped)
    documents = sum(w.documents for w in writers)
    if documents == 0:
        raise UserError(_no_text_message(sources, report))
    train_w, val_w = writers
    for w in writers:
        w.close()
    if train_w.blocks == 0:
        raise UserError(f"corpus too small: {train_w.tokens + train_w.documents:,} training tokens do not fill "
                        f"one block of data.seq_len={seq_len}; add text or lower data.seq_len")
    if vf > 0 and val_w.blocks == 0:
        raise UserError(f"validation split is empty: {val_w.documents:,} documents ({val_w.tokens:,} tokens) "
                        f"fall in it, less than one block of data.seq_len={seq_len}; raise "
                        "data.validation_fraction, add text, or set data.validation_fraction=0")
    split_stats = {}
    for w in writers:
        dropped = int(w.leftover.size)
        if w.blocks * (seq_len - 1) != w.tokens + w.documents - dropped:  # an internal invariant
            raise RuntimeError(f"token accounting mismatch in split {w.name}")
        split_stats[w.name] = {"documents": w.documents, "tokens": w.tokens, "blocks": w.blocks,
                               "dropped_tail_tokens": dropped, "shards": w.finished}
    stats = {
        "documents": documents,
        "tokens": sum(w.tokens for w in writers),
        "separators": documents,
        "blocks": sum(w.blocks for w in writers),
        "dropped_tail_tokens": sum(int(w.leftover.size) for w in writers),
        "splits": {name: {k: v for k, v in s.items() if k != "shards"} for name, s in split_stats.items()},
        "skipped": dict(sorted(report.skipped.items())),
        "repaired": dict(sorted(report.repaired.items())),
        "sources": len(sources),
        "bytes_read": total_bytes,
        "seq_len": seq_len,
        "dtype": dtype.name,
        "vocab_size": tok.get_vocab_size(with_added_tokens=True),
        "tokenizer_hash": tok_hash,
        "cache": str(directory),
        "reused": False,
        "resumed": resumed,
        "tokenize_seconds": round(elapsed, 3),
        "documents_per_s": round(docs_here / elapsed, 1) if elapsed > 0 else 0.0,
        "tokens_per_s": round(tokens_here / elapsed, 1) if elapsed > 0 else 0.0,
    }
    tok_tmp = directory / "tokenizer.json.tmp"
    tok.save(str(tok_tmp))
    os.replace(tok_tmp, directory / "tokenizer.json")
    index = {"format": FORMAT_VERSION, "complete": True, "key": key, "seq_len": seq_len, "dtype": dtype.str,
             "vocab_size": stats["vocab_size"], "cls_id": cls_id, "sep_id": sep_id, "tokenizer_hash": tok_hash,
             "settings": settings, "sources": [s.fingerprint() for s in sources], "splits": split_stats,
             "stats": stats}
    _write_json(directory / "index.json", index)
    progress_path.unlink(missing_ok=True)
    return index


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """The pass makes millions of short-lived, acyclic objects (freed by reference counting);
    the cyclic collector would only rescan everything else in the process (e.g. torch's)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _restore_all(writers: list[_SplitWriter], state: dict) -> bool:
    try:
        return all(w.restore(state["writers"][w.name]) for w in writers)
    except (KeyError, TypeError, ValueError, OSError):
        return False


def _encode(tok: Tokenizer, texts: list[str]) -> list:
    """Token ids of a batch, on all tokenizer threads. `encode_batch_fast` (tokenizers >= 0.20) gives
    the same ids as `encode_batch` without computing character offsets, which we never use."""
    fast = getattr(tok, "encode_batch_fast", None)
    if fast is not None:
        return fast(texts, add_special_tokens=False)
    return tok.encode_batch(texts, add_special_tokens=False)


# ================================================================== summary


def format_summary(stats: dict) -> str:
    """A few human lines: what was prepared, what was skipped or repaired and why."""
    sp = stats.get("splits", {})
    tr, va = sp.get("train", {}), sp.get("validation", {})
    how = "reused cache" if stats.get("reused") else ("resumed and finished" if stats.get("resumed") else "built")
    lines = [
        f"prepared data in {stats.get('cache')} ({how}, {stats.get('seconds', 0):.1f} s)",
        f"  documents  {stats['documents']:,} (train {tr.get('documents', 0):,}, "
        f"validation {va.get('documents', 0):,})",
        f"  tokens     {stats['tokens']:,} (+{stats.get('separators', 0):,} [SEP])",
        f"  blocks     {stats['blocks']:,} x {stats.get('seq_len')} tokens (train {tr.get('blocks', 0):,}, "
        f"validation {va.get('blocks', 0):,}), {stats.get('dtype')}",
        f"  dropped    {stats['dropped_tail_tokens']:,} tail tokens (train {tr.get('dropped_tail_tokens', 0):,}, "
        f"validation {va.get('dropped_tail_tokens', 0):,})",
        f"  tokenizer  vocab {stats.get('vocab_size', 0):,}, hash {stats.get('tokenizer_hash')}"
        f"{' (trained)' if stats.get('tokenizer_trained') else ''}",
    ]
    if not stats.get("reused") and stats.get("tokenize_seconds"):
        lines.append(f"  speed      {stats.get('documents_per_s', 0):,.0f} docs/s, "
                     f"{stats.get('tokens_per_s', 0):,.0f} tokens/s, {stats.get('bytes_read', 0) / 1e6:,.1f} MB read")
    skipped = {k: v for k, v in stats.get("skipped", {}).items() if v}
    repaired = {k: v for k, v in stats.get("repaired", {}).items() if v}
    if skipped:
        lines.append("  skipped    " + ", ".join(f"{v:,} {k} ({SKIP_REASONS.get(k, k)})" for k, v in skipped.items()))
    if repaired:
        lines.append("  repaired   " + ", ".join(f"{v:,} {k} ({REPAIR_REASONS.get(k, k)})"
                                                  for k, v in repaired.items()))
    return "\n".join(lines)
