"""`prepare_data(cfg)`: the cache folder of token blocks for a config, reused, resumed or built.

Preparing a corpus takes from seconds to hours and training calls it on every start (on every
rank), so it is keyed: the cache key hashes each source's fingerprint, every setting that
changes the output and the tokenizer's content, and a folder `blocks-<key>` whose index.json
is complete is reused as is. Keys and file names must stay stable across versions of this
code: a cache built by an older version is reused by a newer one (tests pin them).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np
from tokenizers import Tokenizer

from mlm.data.blocks import BlockDataset
from mlm.data.pipeline import BuildJob, build_blocks
from mlm.data.readers import Source
from mlm.data.report import REPAIR_REASONS, SKIP_REASONS, DirtyInputReport
from mlm.data.shards import FORMAT_VERSION, discard_cache_leftovers, load_complete_index
from mlm.data.sources import resolve_sources
from mlm.data.tokenizer_sample import extend_on_corpus, train_on_corpus
from mlm.errors import UserError
from mlm.storage import StorageError, require_writable
from mlm.tokenizer import CLS, EXTENSION_VERSION, SEP, load_tokenizer, token_id, tokenizer_hash

if TYPE_CHECKING:  # type hints only: mlm.config imports the model package
    from mlm.config import Config, DataConfig


@dataclass
class PreparedData:
    tokenizer: Tokenizer
    train: BlockDataset
    validation: BlockDataset
    stats: dict
    directory: Path  # the cache folder holding index.json, tokenizer.json and the shards


def prepare_data(cfg: Config, *, tokenizer: Tokenizer | None = None, extend_vocab: int = 0,
                 progress: bool | None = None, log: Callable[[str], None] | None = None) -> PreparedData:
    """Build (or reuse, or finish) the tokenized block shards for `cfg.data`; see `mlm.data`.

    `tokenizer` (continued pretraining: the checkpoint's) is used instead of data.tokenizer or a
    trained one; `extend_vocab` > 0 first extends it by up to that many tokens learned from this
    corpus (`mlm.tokenizer.extend_tokenizer`; the result is cached in <cache>/tokenizers/)."""
    d = cfg.data
    if progress is None:
        progress = bool(getattr(getattr(cfg, "log", None), "progress", True))
    log = log or _stderr
    t0 = time.perf_counter()
    _configure_threads(d.num_proc)
    cache = Path(os.path.expanduser(d.cache_dir)) if d.cache_dir else Path(cfg.output_dir) / "data"
    require_writable(cache, "data cache")
    try:
        with cache_lock(cache, log):
            return _prepare_locked(cfg, cache, tokenizer, extend_vocab, progress, log, t0)
    except OSError as err:  # a write failed (disk full, read-only, quota); readers turn read errors into UserError
        where = getattr(err, "filename", None) or cache
        raise StorageError.from_os_error(
            err, "the data cache", where,
            advice="the shards finished so far are kept; free space or set data.cache_dir to another disk, then "
                   "run the same command again to resume from the last finished shard") from None


def _prepare_locked(cfg: Config, cache: Path, tokenizer: Tokenizer | None, extend_vocab: int, progress: bool,
                    log: Callable[[str], None], t0: float) -> PreparedData:
    d = cfg.data
    for path in discard_cache_leftovers(cache):
        log(f"note: removed {path}, left by an interrupted prepare")
    resolve_report = DirtyInputReport(log)
    sources = resolve_sources(d, cache, resolve_report, log)
    if tokenizer is None:
        tok, trained = get_tokenizer(d, sources, cache, progress, log)
    else:
        tok, trained = given_tokenizer(tokenizer, d, sources, cache, extend_vocab, progress, log), False
    thash = tokenizer_hash(tok)
    dtype = block_dtype(tok)
    settings = output_settings(d)
    key = blocks_key(sources, settings, thash, dtype)
    directory = cache / f"blocks-{key}"
    index = load_complete_index(directory, key, log)
    if index is not None:
        stats = dict(index["stats"])
        stats.update(reused=True, resumed=False)
    else:
        job = BuildJob(directory, key, sources, d, tok, thash, dtype, settings, progress, log)
        index = build_blocks(job, resolve_report)
        stats = dict(index["stats"])
    stats["seconds"] = round(time.perf_counter() - t0, 3)
    stats["tokenizer_trained"] = trained
    stats["tokenizer_path"] = str(directory / "tokenizer.json")
    splits = index["splits"]
    train = BlockDataset(directory, splits["train"]["shards"], index["seq_len"], index["dtype"], "train")
    val = BlockDataset(directory, splits["validation"]["shards"], index["seq_len"], index["dtype"], "validation")
    return PreparedData(tok, train, val, stats, directory)


# ------------------------------------------------------------------ cache keys


def digest(obj: Any) -> str:
    """16 hex digits of the sha256 of `obj` as canonical JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


# Reader settings added after the key was first pinned: in the key only when not at their default, so
# a config that does not use them keeps the key (and the cache) older versions wrote.
LATER_READER_SETTINGS = {"strip_whitespace": True, "fasta_header": "drop", "fasta_uppercase": True}


def reader_settings(d: DataConfig) -> dict:
    """Everything that decides which documents (and which split) the reader produces."""
    settings = {"validation_fraction": d.validation_fraction, "text_field": d.text_field,
                "txt_documents": d.txt_documents, "min_chars": d.min_chars, "max_chunk_chars": d.max_chunk_chars,
                "max_record_chars": d.max_record_chars, "hf_split": d.hf_split, "hf_config": d.hf_config}
    for name, default in LATER_READER_SETTINGS.items():
        value = getattr(d, name, default)
        if value != default:
            settings[name] = value
    return settings


def output_settings(d: DataConfig) -> dict:
    """Everything besides sources and tokenizer that decides the blocks (recorded in index.json)."""
    return {**reader_settings(d), "seq_len": d.seq_len, "shard_blocks": d.shard_blocks}


def block_dtype(tokenizer: Tokenizer) -> np.dtype:
    """uint16 when every id fits, else int32 (little-endian either way)."""
    return np.dtype("<u2") if tokenizer.get_vocab_size(with_added_tokens=True) <= 65536 else np.dtype("<i4")


def blocks_key(sources: list[Source], settings: dict, tokenizer_hash: str, dtype: np.dtype) -> str:
    """The `<key>` of the `blocks-<key>` folder."""
    return digest({"format": FORMAT_VERSION, "sources": [s.fingerprint() for s in sources],
                   "settings": settings, "tokenizer": tokenizer_hash, "dtype": dtype.str})


def extended_tokenizer_name(d: DataConfig, sources: list[Source], base_hash: str, max_new: int,
                            tokenizers_version: str) -> str:
    """The file name, in <cache>/tokenizers/, of `base` extended by `max_new` tokens of these sources."""
    key = digest({"format": FORMAT_VERSION, "sources": [s.fingerprint() for s in sources],
                  "settings": reader_settings(d), "base": base_hash, "extend_vocab": max_new,
                  "sample_bytes": d.tokenizer_sample_bytes, "tokenizers": tokenizers_version,
                  "extension": EXTENSION_VERSION})
    return f"extended-{base_hash}-{max_new}-{key}.json"


def trained_tokenizer_name(d: DataConfig, sources: list[Source], tokenizers_version: str) -> str:
    """The file name, in <cache>/tokenizers/, of the tokenizer trained for these sources and settings."""
    key = digest({"format": FORMAT_VERSION, "sources": [s.fingerprint() for s in sources],
                  "settings": reader_settings(d), "kind": d.tokenizer_type, "vocab_size": d.vocab_size,
                  "sample_bytes": d.tokenizer_sample_bytes, "tokenizers": tokenizers_version})
    return f"{d.tokenizer_type}-{d.vocab_size}-{key}.json"


# ------------------------------------------------------------------ tokenizer, lock, environment


def get_tokenizer(d: DataConfig, sources: list[Source], cache: Path, progress: bool,
                  log: Callable[[str], None]) -> tuple[Tokenizer, bool]:
    """(tokenizer, whether it was trained): data.tokenizer when given, else the one trained for
    these sources (trained now on first use, then cached)."""
    if d.tokenizer:
        path = Path(os.path.expanduser(d.tokenizer))
        tok = load_tokenizer(path)
        trained = False
    else:
        import tokenizers

        path = cache / "tokenizers" / trained_tokenizer_name(d, sources, tokenizers.__version__)
        trained = True
        if path.is_file():
            tok = load_tokenizer(path)
        else:
            tok = train_on_corpus(d, sources, progress, log)
            save_tokenizer(tok, path)
    return checked_tokenizer(tok, path), trained


def given_tokenizer(base: Tokenizer, d: DataConfig, sources: list[Source], cache: Path, max_new: int,
                    progress: bool, log: Callable[[str], None]) -> Tokenizer:
    """A tokenizer passed in (a checkpoint's), extended by up to `max_new` tokens of these sources when
    `max_new` > 0 (once per sources and settings: the result is cached)."""
    import tokenizers

    tok = Tokenizer.from_str(base.to_str())
    path: Path | str = "the given tokenizer"
    if max_new > 0:
        path = cache / "tokenizers" / extended_tokenizer_name(d, sources, tokenizer_hash(base), max_new,
                                                              tokenizers.__version__)
        if path.is_file():
            tok = load_tokenizer(path)
        else:
            tok = extend_on_corpus(d, sources, tok, max_new, progress, log)
            save_tokenizer(tok, path)
    return checked_tokenizer(tok, path)


def save_tokenizer(tok: Tokenizer, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tok.save(str(tmp))
    os.replace(tmp, path)


def checked_tokenizer(tok: Tokenizer, path: Path | str) -> Tokenizer:
    """`tok` without truncation or padding, refused (naming `path`) when it lacks [CLS] or [SEP]."""
    tok.no_truncation()
    tok.no_padding()
    for special in (CLS, SEP):
        try:
            token_id(tok, special)
        except UserError as err:
            raise UserError(f"{path}: {err}") from None
    return tok


@contextlib.contextmanager
def cache_lock(cache: Path, log: Callable[[str], None]) -> Iterator[None]:
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


# ------------------------------------------------------------------ summary


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
