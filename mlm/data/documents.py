"""The piece stream over all sources: cleaned document text, its split, and a resumable position.

The tokenizing pass needs, for every document in a fixed order: its text in pieces of bounded
size (a document longer than data.max_chunk_chars is cut at whitespace, so memory never depends
on it), which split it belongs to (a hash of its text, so the split does not depend on file
order or thread count), and a position from which a later run can pick up exactly there.
"""
from __future__ import annotations

import contextlib
import hashlib
from collections import Counter
from typing import TYPE_CHECKING, Iterable, Iterator

from mlm.data.cutting import recut
from mlm.data.decoding import read_errors
from mlm.data.readers import ReadProgress, Source, open_documents
from mlm.data.report import DirtyInputReport, Location
from mlm.errors import UserError

if TYPE_CHECKING:  # type hints only: mlm.config imports the model package
    from mlm.config import DataConfig

Piece = tuple  # (source index, pieces so far in that source, text, split hash, document ends, where)


def split_hash(text: str) -> float:
    """blake2b-64 of the UTF-8 text as a fraction of 2**64: the document goes to validation when
    this is below data.validation_fraction."""
    h = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(h, "little") / 18446744073709551616.0


class PieceStream:
    """Streams pieces `(source index, count, text, split hash, end, where)` over all sources.

    A document longer than max_chunk_chars arrives as several pieces (cut at whitespace) that the
    caller concatenates without a separator; the last has end=True, and all carry the hash of
    the first. `(source index, count)` is a position: `pieces(start=it)` continues right after it.
    Blank and too-short documents are skipped and NULs removed, all counted in `report`. Documents
    (and the pieces of a long one) are stripped of surrounding whitespace unless
    data.strip_whitespace is false; then they keep it all, and only all-blank documents are skipped.
    """

    def __init__(self, sources: list[Source], d: DataConfig, report: DirtyInputReport, need_hash: bool):
        self.sources = sources
        self.settings = d
        self.report = report
        self.need_hash = need_hash
        self.max_chars = d.max_chunk_chars
        self.min_chars = max(1, d.min_chars)
        self.strip = d.strip_whitespace
        self.progress = ReadProgress()

    def bytes_done(self) -> int:
        """Bytes of the corpus read so far (for the progress bar)."""
        return self.progress.bytes_done()

    def pieces(self, start: tuple[int, int] = (0, 0)) -> Iterator[Piece]:
        first_source, already_done = start
        for index, source in enumerate(self.sources):
            if index < first_source:
                self.progress.source_done(source.size)
                continue
            pieces = self._source_pieces(index, source)
            if index == first_source and already_done:
                self._skip(pieces, already_done, source)
            yield from pieces
            self.progress.source_done(source.size)

    def _skip(self, pieces: Iterator[Piece], n: int, source: Source) -> None:
        """Read past the first `n` pieces quietly: an earlier run counted their dirty input."""
        with self.report.quiet():
            try:
                for _ in range(n):
                    next(pieces)
            except StopIteration:
                raise UserError(f"{source.name}: changed while being prepared (resume point not found); "
                                "run again") from None

    def _hash(self, text: str) -> float:
        return split_hash(text) if self.need_hash else 1.0

    def _source_pieces(self, index: int, source: Source) -> Iterator[Piece]:
        count = 0
        max_chars = self.max_chars
        with contextlib.ExitStack() as stack:
            try:
                documents = open_documents(source, self.settings, self.report, self.progress, stack)
                if documents is None:  # empty or binary: already reported
                    return
                for where, chunks in documents:
                    if type(chunks) is str and len(chunks) <= max_chars:  # the common case: one piece
                        text = self._short_document(chunks, where)
                        if text is not None:
                            count += 1
                            yield index, count, text, self._hash(text), True, where
                        continue
                    for text, fraction, end in self._long_document(chunks, where):
                        count += 1
                        yield index, count, text, fraction, end, where
            except Exception as err:
                if not isinstance(err, read_errors()):
                    raise
                detail = str(err).splitlines()[0] if str(err) else type(err).__name__
                raise UserError(f"{source.name}: cannot read it (corrupt or truncated data? {detail})") from None
        if count == 0 and not self.report.is_quiet:
            self.report.skip("no_documents", (source.name,))

    def _short_document(self, raw: str, where: Location) -> str | None:
        """The (stripped) text of a one-piece document; None (counted) when blank or too short."""
        text = raw.strip() if self.strip else raw
        if not text or (not self.strip and text.isspace()):
            self.report.skip("blank", where)
            return None
        text = self._without_nul(text, where)
        visible = len(text) if self.strip else len(text.strip())
        if visible < self.min_chars:
            self.report.skip("too_short" if visible else "blank", where)
            return None
        return text

    def _long_document(self, chunks: str | Iterable[str], where: Location) -> Iterator[tuple[str, float, bool]]:
        """(text, split hash, end) for each piece of a document that may exceed max_chars."""
        fraction = None
        pending = None
        for raw in recut(chunks, self.max_chars):
            text = self._without_nul(raw.strip() if self.strip else raw, where)
            if not text:
                continue
            if pending is not None:
                if fraction is None:
                    fraction = self._hash(pending)
                    self.report.repair("long_document", where)
                yield pending, fraction, False
            pending = text
        if pending is None:
            self.report.skip("blank", where)
            return
        if fraction is None:
            if len(pending) < self.min_chars:
                self.report.skip("too_short", where)
                return
            fraction = self._hash(pending)
        yield pending, fraction, True

    def _without_nul(self, text: str, where: Location) -> str:
        if "\x00" in text:
            n = text.count("\x00")
            text = text.replace("\x00", "")
            text = text.strip() if self.strip else text
            self.report.repair("nul_bytes", where, f"{n} removed", n)
        return text


def no_usable_text_error(sources: list[Source], skipped: Counter) -> UserError:
    """The error for a corpus without one usable document: which files, and what was skipped why."""
    names = [s.name for s in sources]
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    why = ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items()) if n)
    return UserError(f"no usable text in {shown}" + (f" (skipped: {why})" if why else ""))
