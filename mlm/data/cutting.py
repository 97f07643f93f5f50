"""Where a text too long to handle in one piece is cut: after whitespace, never inside a word.

Two places cut long text and must agree on the rule: the piece stream (a document longer than
data.max_chunk_chars is tokenized in pieces; cutting at whitespace gives the same tokens as the
whole) and the default corpus (long docstrings are split into documents).
"""
from __future__ import annotations

from typing import Iterable, Iterator


def cut_point(text: str, limit: int) -> int:
    """Where to cut `text` (longer than `limit`): after the last whitespace in its first `limit`
    characters when that is past the middle, else hard at `limit`."""
    i = max(text.rfind(" ", 0, limit), text.rfind("\n", 0, limit), text.rfind("\t", 0, limit))
    return i + 1 if i >= limit // 2 else limit


def recut(chunks: str | Iterable[str], max_chars: int) -> Iterator[str]:
    """Re-cut the raw chunks of one document into pieces of at most `max_chars`, at whitespace.
    The chunks are consumed as the pieces are, so a document is never held whole."""
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
                cut = cut_point(buf, max_chars)
                yield buf[:cut]
                buf = buf[cut:]
            parts, size = [buf], len(buf)
    if size:
        yield "".join(parts)
