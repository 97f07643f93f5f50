"""The tokenizing pass: pieces -> encode batches -> packed blocks -> shards, with checkpoints.

Tokenization dominates the cost of a prepare, and the tokenizer encodes a batch on all cores
without the GIL. So the pass is pipelined: while the tokenizer's threads encode batch n, this
thread packs and writes batch n-1 and reads batch n+1, and reading and packing cost almost no
wall time. Every finished shard (and every `CHECKPOINT_SECONDS`) the reader position, the
partial shards and the dirty-input counts go to progress.json, so a killed run resumes there.

Test seams: `BATCH_CHARS` (shrink the batches), `encode_batch` (the tokenizer call) and
`mlm.data.shards.write_progress` (called once per checkpoint) are looked up at call time.
"""
from __future__ import annotations

import contextlib
import gc
import itertools
import sys
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, NamedTuple

import numpy as np
from tokenizers import Tokenizer

from mlm.data import shards
from mlm.data.documents import PieceStream, no_usable_text_error
from mlm.data.readers import Source
from mlm.data.report import DirtyInputReport
from mlm.data.shards import FORMAT_VERSION, SPLITS, SplitWriter, restore_writers, write_json
from mlm.errors import UserError
from mlm.tokenizer import CLS, SEP, text_encoder, token_id

if TYPE_CHECKING:  # type hints only: mlm.config imports the model package
    from mlm.config import DataConfig

BATCH_CHARS = 1 << 20  # characters per encode batch
BATCH_PIECES = 4096  # pieces per encode batch
CHECKPOINT_SECONDS = 60.0  # besides every finished shard


def encode_batch(tokenizer: Tokenizer, texts: list[str]) -> list:
    """Token ids of a batch, on all tokenizer threads. `encode_batch_fast` (tokenizers >= 0.20) gives
    the same ids as `encode_batch` without computing character offsets, which we never use."""
    fast = getattr(tokenizer, "encode_batch_fast", None)
    if fast is not None:
        return fast(texts, add_special_tokens=False)
    return tokenizer.encode_batch(texts, add_special_tokens=False)


@dataclass
class BuildJob:
    """What one cache folder is built from."""

    directory: Path
    key: str
    sources: list[Source]
    settings: DataConfig
    tokenizer: Tokenizer
    tokenizer_hash: str
    dtype: np.dtype
    output_settings: dict  # recorded in index.json
    progress: bool
    log: Callable[[str], None]


class EncodeBatch(NamedTuple):
    texts: list[str]
    metas: list[tuple]  # per piece: (split 0/1, document ends, where)
    # (the reader position after the batch, the reader's dirty-input counts there); None for the last batch
    resume_point: tuple[tuple[int, int], dict] | None


class TokenPacker:
    """Appends encoded pieces to their split's stream: a document's tokens, then [SEP] at its end
    (a document that tokenizes to nothing is skipped as `no_tokens`)."""

    def __init__(self, writers: list[SplitWriter], sep_id: int, dtype: np.dtype, report: DirtyInputReport,
                 doc_has_tokens: bool = False):
        self.writers = writers
        self.sep = [sep_id]
        self.dtype = dtype
        self.report = report  # only the events found after tokenizing
        self.doc_has_tokens = doc_has_tokens  # the current document has tokens in earlier pieces
        self.documents_added = 0
        self.tokens_added = 0

    def add(self, encodings: list, metas: list[tuple]) -> None:
        parts: tuple[list, list] = ([], [])
        ntok = [0, 0]
        ndoc = [0, 0]
        has = self.doc_has_tokens
        for enc, (split, end, where) in zip(encodings, metas):
            ids = enc.ids
            if ids:
                parts[split].append(ids)
                ntok[split] += len(ids)
                has = True
            if end:
                if has:
                    parts[split].append(self.sep)
                    ndoc[split] += 1
                else:
                    self.report.skip("no_tokens", where)
                has = False
        self.doc_has_tokens = has
        for s, writer in enumerate(self.writers):
            if parts[s]:
                writer.add(np.fromiter(itertools.chain.from_iterable(parts[s]), dtype=self.dtype,
                                       count=ntok[s] + ndoc[s]))
            writer.documents += ndoc[s]
            writer.tokens += ntok[s]
        self.documents_added += ndoc[0] + ndoc[1]
        self.tokens_added += ntok[0] + ntok[1]


class Checkpoints:
    """Records progress.json after every finished shard and every CHECKPOINT_SECONDS."""

    def __init__(self, key: str, directory: Path, packer: TokenPacker):
        self.key = key
        self.directory = directory
        self.packer = packer
        self.last = time.monotonic()

    def due(self) -> bool:
        return any(w.shard_done for w in self.packer.writers) or time.monotonic() - self.last >= CHECKPOINT_SECONDS

    def save(self, position: tuple[int, int], reader_counts: dict) -> None:
        counts = {kind: dict(Counter(reader_counts[kind]) + Counter(getattr(self.packer.report, kind)))
                  for kind in ("skipped", "repaired")}
        state = {"key": self.key, "position": list(position), "doc_has_tokens": self.packer.doc_has_tokens,
                 "report": counts, "writers": {w.name: w.state() for w in self.packer.writers},
                 "block_bytes": self.packer.writers[0].block_bytes}
        shards.write_progress(self.directory, state)
        for w in self.packer.writers:
            w.shard_done = False
        self.last = time.monotonic()


class ResumePoint(NamedTuple):
    writers: list[SplitWriter]
    position: tuple[int, int]
    doc_has_tokens: bool
    resumed: bool


def resume_or_start(job: BuildJob, cls_id: int, report: DirtyInputReport) -> ResumePoint:
    """Continue an interrupted build of this key when its progress.json and shards verify;
    otherwise empty the folder and start over."""
    d = job.settings

    def new_writers() -> list[SplitWriter]:
        return [SplitWriter(job.directory, name, d.seq_len, job.dtype, d.shard_blocks, cls_id) for name in SPLITS]

    writers = new_writers()
    state = shards.read_progress(job.directory)
    if state is not None and state.get("key") == job.key and restore_writers(writers, state):
        report.restore(state["report"])
        job.log(f"resuming the interrupted prepare in {job.directory} (train {writers[0].blocks:,} blocks, "
                f"validation {writers[1].blocks:,} blocks already written)")
        return ResumePoint(writers, tuple(state["position"]), bool(state["doc_has_tokens"]), True)
    for w in writers:
        w.abandon()
    for stale in job.directory.iterdir():
        if stale.is_file():
            stale.unlink()
    return ResumePoint(new_writers(), (0, 0), False, False)


def encode_batches(stream: PieceStream, start: tuple[int, int], validation_fraction: float,
                   report: DirtyInputReport) -> Iterator[EncodeBatch]:
    """Cut the piece stream into encode batches; each carries the reader position and the reader's
    counts at its end, which a checkpoint taken after the batch is written must record."""
    texts: list[str] = []
    metas: list[tuple] = []
    chars = 0
    for source_index, count, text, u, end, where in stream.pieces(start):
        texts.append(text)
        metas.append((1 if u < validation_fraction else 0, end, where))
        chars += len(text)
        if chars >= BATCH_CHARS or len(texts) >= BATCH_PIECES:
            yield EncodeBatch(texts, metas, ((source_index, count), report.counts()))
            texts, metas, chars = [], [], 0
    if texts:
        yield EncodeBatch(texts, metas, None)


def build_blocks(job: BuildJob, resolve_report: DirtyInputReport) -> dict:
    """Write the cache folder for `job` (resuming an interrupted build) and return its index."""
    job.directory.mkdir(parents=True, exist_ok=True)
    for path in shards.discard_unrecorded_writes(job.directory):
        job.log(f"note: {path}: removed what an interrupted prepare wrote after its last checkpoint")
    cls_id, sep_id = token_id(job.tokenizer, CLS), token_id(job.tokenizer, SEP)
    report = DirtyInputReport(job.log)
    resume = resume_or_start(job, cls_id, report)
    packer = TokenPacker(resume.writers, sep_id, job.dtype, DirtyInputReport(job.log), resume.doc_has_tokens)
    stream = PieceStream(job.sources, job.settings, report, need_hash=job.settings.validation_fraction > 0)
    batches = encode_batches(stream, resume.position, job.settings.validation_fraction, report)
    try:
        elapsed = _tokenize(job, batches, stream, packer, Checkpoints(job.key, job.directory, packer))
    except OSError:  # a failed write: cut the partial shards back to the last checkpoint, for the next run
        for w in packer.writers:
            with contextlib.suppress(OSError):  # closing flushes, which may fail again
                w.abandon()
        shards.discard_unrecorded_writes(job.directory)
        raise
    report.skipped.update(resolve_report.skipped)
    report.skipped.update(packer.report.skipped)
    if sum(w.documents for w in packer.writers) == 0:
        raise no_usable_text_error(job.sources, report.skipped)
    for w in packer.writers:
        w.close()
    _check_splits(packer.writers, job.settings)
    stats = _stats(job, packer, report, resume.resumed, elapsed)
    tmp = job.directory / "tokenizer.json.tmp"
    job.tokenizer.save(str(tmp))
    tmp.replace(job.directory / "tokenizer.json")
    index = {"format": FORMAT_VERSION, "complete": True, "key": job.key, "seq_len": job.settings.seq_len,
             "dtype": job.dtype.str, "vocab_size": stats["vocab_size"], "cls_id": cls_id, "sep_id": sep_id,
             "tokenizer_hash": job.tokenizer_hash, "settings": job.output_settings,
             "sources": [s.fingerprint() for s in job.sources],
             "splits": {w.name: _split_stats(w) for w in packer.writers}, "stats": stats}
    write_json(job.directory / shards.INDEX_FILE, index)
    (job.directory / shards.PROGRESS_FILE).unlink(missing_ok=True)
    return index


def _tokenize(job: BuildJob, batches: Iterator[EncodeBatch], stream: PieceStream, packer: TokenPacker,
              checkpoints: Checkpoints) -> float:
    """Run the pipelined pass to the end; returns its wall time in seconds."""
    from tqdm import tqdm

    encoder = text_encoder(job.tokenizer)  # a literal "[MASK]" etc. in the text stays text
    total_bytes = sum(s.size for s in job.sources)
    t_start = time.perf_counter()
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlm-encode")
    try:
        with _gc_paused(), tqdm(total=total_bytes or None, unit="B", unit_scale=True, unit_divisor=1024,
                                desc="tokenize", disable=not job.progress, file=sys.stderr,
                                dynamic_ncols=True) as bar:

            def write(batch: EncodeBatch, future: Future) -> None:
                packer.add(future.result(), batch.metas)
                if batch.resume_point is not None and checkpoints.due():
                    checkpoints.save(*batch.resume_point)
                elapsed = max(1e-9, time.perf_counter() - t_start)
                bar.update(max(0, stream.bytes_done() - bar.n))
                bar.set_postfix_str(f"{packer.documents_added / elapsed:,.0f} docs/s, "
                                    f"{packer.tokens_added / elapsed:,.0f} tok/s", refresh=False)

            pending: tuple[EncodeBatch, Future] | None = None
            for batch in batches:
                future = pool.submit(encode_batch, encoder, batch.texts)
                if pending is not None:
                    write(*pending)
                pending = (batch, future)
            if pending is not None:
                write(*pending)
            bar.update(max(0, total_bytes - bar.n))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return time.perf_counter() - t_start


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


def _check_splits(writers: list[SplitWriter], d: DataConfig) -> None:
    train, validation = writers
    if train.blocks == 0:
        raise UserError(f"corpus too small: {train.tokens + train.documents:,} training tokens do not fill "
                        f"one block of data.seq_len={d.seq_len}; add text or lower data.seq_len")
    if d.validation_fraction > 0 and validation.blocks == 0:
        raise UserError(f"validation split is empty: {validation.documents:,} documents ({validation.tokens:,} "
                        f"tokens) fall in it, less than one block of data.seq_len={d.seq_len}; raise "
                        "data.validation_fraction, add text, or set data.validation_fraction=0")
    for w in writers:
        if w.blocks * (w.seq_len - 1) != w.tokens + w.documents - w.leftover.size:  # an internal invariant
            raise RuntimeError(f"token accounting mismatch in split {w.name}")


def _split_stats(w: SplitWriter) -> dict:
    return {"documents": w.documents, "tokens": w.tokens, "blocks": w.blocks,
            "dropped_tail_tokens": int(w.leftover.size), "shards": w.finished}


def _stats(job: BuildJob, packer: TokenPacker, report: DirtyInputReport, resumed: bool, elapsed: float) -> dict:
    writers = packer.writers
    documents = sum(w.documents for w in writers)
    return {
        "documents": documents,
        "tokens": sum(w.tokens for w in writers),
        "separators": documents,
        "blocks": sum(w.blocks for w in writers),
        "dropped_tail_tokens": sum(int(w.leftover.size) for w in writers),
        "splits": {w.name: {k: v for k, v in _split_stats(w).items() if k != "shards"} for w in writers},
        "skipped": dict(sorted(report.skipped.items())),
        "repaired": dict(sorted(report.repaired.items())),
        "sources": len(job.sources),
        "bytes_read": sum(s.size for s in job.sources),
        "seq_len": job.settings.seq_len,
        "dtype": job.dtype.name,
        "vocab_size": job.tokenizer.get_vocab_size(with_added_tokens=True),
        "tokenizer_hash": job.tokenizer_hash,
        "cache": str(job.directory),
        "reused": False,
        "resumed": resumed,
        "tokenize_seconds": round(elapsed, 3),
        "documents_per_s": round(packer.documents_added / elapsed, 1) if elapsed > 0 else 0.0,
        "tokens_per_s": round(packer.tokens_added / elapsed, 1) if elapsed > 0 else 0.0,
    }

