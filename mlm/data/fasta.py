"""FASTA: one document per record (proteins, DNA), read in a single pass with one line of lookahead.

A FASTA file is records of a ">header" line followed by sequence lines of any width. Read as plain
text it would give one document per 60-residue line with the headers mixed in; here each record is
one document: the sequence without its line breaks (the header dropped, or kept as the first line
with data.fasta_header=keep). Registered in `mlm.data.readers.FILE_FORMATS`; compression and text
encodings are handled there, before this reader sees the lines.
"""
from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Iterable, Iterator

from mlm.data.report import Location

if TYPE_CHECKING:  # the reader's input type; readers imports this module
    from mlm.data.readers import Document, TextInput


def read_fasta(file: TextInput) -> Iterator[Document]:
    """One document per FASTA record: its sequence with the line breaks (and any other whitespace)
    removed, upper-cased (data.fasta_uppercase) and without a final "*" (a stop marker, not a residue;
    a "*" inside is kept); with data.fasta_header=keep, the ">header" line and a newline come first.
    Lines starting with ";" are comments. Sequence lines before the first header form a record of
    their own. A record without a sequence is skipped and counted (`empty_record`)."""
    return FastaRecords(file).documents()


class FastaRecords:
    """Reads records one after the other from the lines of a FASTA file, with one line of lookahead
    (the next record's header ends a sequence). A record longer than data.max_chunk_chars comes as an
    iterator of pieces, read as the caller consumes it, so no record is held whole."""

    def __init__(self, file: TextInput):
        self.name = file.source.name
        self.report = file.report
        self.limit = file.settings.max_chunk_chars
        self.keep_header = file.settings.fasta_header == "keep"
        self.upper = file.settings.fasta_uppercase
        self._lines = file.lines(self.limit)
        self._pending: tuple[int, str, bool] | None = None
        self._at_line_start = True

    def _next(self) -> tuple[int, str, bool, bool] | None:
        """(line number, text, complete, starts a line), or None at the end."""
        if self._pending is not None:
            item, self._pending = self._pending, None
        else:
            item = next(self._lines, None)
            if item is None:
                return None
        starts = self._at_line_start
        self._at_line_start = item[2]
        return item[0], item[1], item[2], starts

    def _push_back(self, item: tuple[int, str, bool, bool]) -> None:
        self._pending = item[:3]
        self._at_line_start = True  # only whole lines starting a record are pushed back

    def _rest_of_line(self, text: str, complete: bool) -> str:
        """A line's text up to `limit` characters; the rest of a longer line is read and dropped."""
        while not complete:
            item = self._next()
            if item is None:
                break
            complete = item[2]
        return text

    def documents(self) -> Iterator[Document]:
        while (item := self._next()) is not None:
            lineno, text, complete, _ = item
            header = ""
            if text.startswith(">"):
                header = self._rest_of_line(text, complete).rstrip()
            elif text.startswith(";") or not text.strip():
                self._rest_of_line(text, complete)
                continue
            else:
                self._push_back(item)
            where = (self.name, lineno)
            document = self._record(header, where)
            if document is not None:
                yield where, document

    def _residues(self, text: str) -> str:
        text = "".join(text.split()) if any(c.isspace() for c in text) else text
        return text.upper() if self.upper else text

    def _sequence_lines(self) -> Iterator[str]:
        """The residues of each sequence line (or line piece) up to the next header."""
        while (item := self._next()) is not None:
            _, text, complete, starts = item
            if starts and text.startswith(">"):
                self._push_back(item)
                return
            if starts and text.startswith(";"):
                self._rest_of_line(text, complete)
                continue
            residues = self._residues(text)
            if residues:
                yield residues

    def _record(self, header: str, where: Location) -> str | Iterable[str] | None:
        """The record's document: a str, or an iterator of pieces when longer than the limit."""
        prefix = [header + "\n"] if self.keep_header and header else []
        lines = self._sequence_lines()
        parts: list[str] = []
        size = 0
        for residues in lines:
            parts.append(residues)
            size += len(residues)
            if size > self.limit:
                return itertools.chain(prefix, _without_final_stop(itertools.chain(parts, lines)))
        sequence = "".join(parts).rstrip("*")
        if not sequence:
            self.report.skip("empty_record", where, header[:80] or "no header")
            return None
        return "".join(prefix) + sequence


def _without_final_stop(pieces: Iterable[str]) -> Iterator[str]:
    """The pieces with the "*" at the very end removed (one piece of lookahead)."""
    previous = None
    for piece in pieces:
        if previous is not None:
            yield previous
        previous = piece
    if previous is not None:
        trimmed = previous.rstrip("*")
        if trimmed:
            yield trimmed

