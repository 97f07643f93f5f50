"""From the bytes of a file to lines of text: decompression, text encodings, and repairs.

Corpora arrive compressed or not, in UTF-8 or UTF-16/32, with CRLF line ends, NUL characters
and undecodable bytes, and sometimes as one line of gigabytes. This module sniffs compression
from the first bytes (never the name), guesses the encoding from byte-order marks and NUL
patterns, decodes with every undecodable byte sequence replaced by U+FFFD and *counted per
stream* (no global codec error handler), and reads lines in bounded pieces, so memory never
depends on the length of a line.
"""
from __future__ import annotations

import bz2
import codecs
import gzip
import io
import lzma
import sys
import zlib
from typing import Any, BinaryIO, Callable, Iterator, NamedTuple

from mlm.data.report import DirtyInputReport
from mlm.errors import UserError

COMPRESSION_SUFFIXES = (".gz", ".gzip", ".zst", ".zstd", ".bz2", ".xz")
_MAGIC = ((b"\x1f\x8b", "gzip"), (b"\x28\xb5\x2f\xfd", "zstd"), (b"\xfd7zXZ\x00", "xz"))

READ_BYTES = 1 << 20
"""Bytes per read of a text stream (module constant, so tests can shrink it)."""

UNDECODABLE = "\udcff"
"""What `RepairingDecoder` puts where an undecodable byte sequence was. A lone surrogate cannot be
the result of decoding valid UTF-8/16/32, so it marks exactly the repairs (`LineReader` counts
and replaces each with U+FFFD)."""

_REPAIR_WINDOW = 256  # bytes decoded per try while repairing: each error costs O(window), not O(chunk)


# ------------------------------------------------------------------ compression


def strip_compression_suffix(name: str) -> str:
    """The lower-cased file name without a compression suffix (`a.JSONL.gz` -> `a.jsonl`)."""
    lower = name.lower()
    for suffix in COMPRESSION_SUFFIXES:
        if lower.endswith(suffix):
            return lower[: -len(suffix)]
    return lower


def compression_of(head: bytes) -> str | None:
    """"gzip", "zstd", "xz" or "bz2" from a file's first bytes; None when not compressed."""
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if head[:3] == b"BZh" and head[3:4] in tuple(bytes([c]) for c in b"123456789"):
        return "bz2"
    return None


def looks_compressed(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return compression_of(f.read(8)) is not None
    except OSError:
        return False


def decompressor(kind: str, raw: BinaryIO, name: str) -> Any:
    """A readable binary stream of the decompressed bytes of `raw`."""
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


def read_errors() -> tuple[type, ...]:
    """The exceptions that mean corrupt or truncated (compressed) data."""
    errors: list[type] = [OSError, EOFError, zlib.error, lzma.LZMAError]
    zstd = sys.modules.get("zstandard")
    if zstd is not None and hasattr(zstd, "ZstdError"):
        errors.append(zstd.ZstdError)
    return tuple(errors)


# ------------------------------------------------------------------ text encodings


class EncodingGuess(NamedTuple):
    encoding: str | None  # a Python codec name; None: not text
    reason: str | None  # the report reason to record ("utf16_or_32", "utf16_without_bom", "binary_file")
    detail: str = ""


def guess_encoding(sample: bytes) -> EncodingGuess:
    """The encoding of a stream from its first bytes: a byte-order mark, else UTF-16 when the NUL
    bytes fall unambiguously on one side, else binary when NULs are common, else UTF-8."""
    if sample.startswith(codecs.BOM_UTF8):
        return EncodingGuess("utf-8-sig", None)
    if sample.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        return EncodingGuess("utf-32", "utf16_or_32")
    if sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return EncodingGuess("utf-16", "utf16_or_32")
    if b"\x00" in sample and len(sample) >= 16:
        even, odd = sample[0::2], sample[1::2]
        zero_even, zero_odd = even.count(0) / len(even), odd.count(0) / len(odd)
        if zero_odd > 0.6 and zero_even < 0.05:
            return EncodingGuess("utf-16-le", "utf16_without_bom", "little-endian")
        if zero_even > 0.6 and zero_odd < 0.05:
            return EncodingGuess("utf-16-be", "utf16_without_bom", "big-endian")
        if sample.count(0) > 0.3 * len(sample):
            return EncodingGuess(None, "binary_file")
    return EncodingGuess("utf-8", None)


_DECODERS: dict[str, Callable[..., tuple[str, int]]] = {
    "utf-8": codecs.utf_8_decode,
    "utf-16-le": codecs.utf_16_le_decode,
    "utf-16-be": codecs.utf_16_be_decode,
    "utf-32-le": codecs.utf_32_le_decode,
    "utf-32-be": codecs.utf_32_be_decode,
}
_BYTE_ORDER_MARKS = {  # codecs that take their byte order from a mark: (mark, fixed-order codec)
    "utf-8-sig": ((codecs.BOM_UTF8, "utf-8"),),
    "utf-16": ((codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be")),
    "utf-32": ((codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be")),
}


def byte_order(encoding: str, head: bytes) -> tuple[str, int]:
    """(codec of fixed byte order, length of the byte-order mark to skip) for `encoding` and a
    stream starting with `head`; "utf-8-sig", "utf-16" and "utf-32" read the mark."""
    marks = _BYTE_ORDER_MARKS.get(encoding)
    if marks is None:
        if encoding not in _DECODERS:
            raise ValueError(f"unsupported encoding {encoding!r}")
        return encoding, 0
    for mark, codec in marks:
        if head.startswith(mark):
            return codec, len(mark)
    return marks[0][1], 0


class RepairingDecoder:
    """An incremental decoder that puts `UNDECODABLE` where errors="replace" would put U+FFFD (one
    per undecodable sequence) and counts them in `replaced`. Its state is its own: two streams
    decoded at once never mix their counts."""

    def __init__(self, codec: str):
        self._decode = _DECODERS[codec]
        self._pending = b""
        self.replaced = 0

    def decode(self, data: bytes, final: bool = False) -> str:
        if self._pending:
            data = self._pending + data
        try:
            text, used = self._decode(data, "strict", final)
        except UnicodeDecodeError:
            text, used = self._decode_repairing(data, final)
        self._pending = data[used:]
        return text

    def _decode_repairing(self, data: bytes, final: bool) -> tuple[str, int]:
        parts: list[str] = []
        view = memoryview(data)
        start, end = 0, len(data)
        while start < end:
            window = view[start:start + _REPAIR_WINDOW]
            last = start + _REPAIR_WINDOW >= end
            try:
                text, used = self._decode(window, "strict", final and last)
            except UnicodeDecodeError as err:
                parts.append(self._decode(window[:err.start], "strict", True)[0])
                parts.append(UNDECODABLE)
                self.replaced += 1
                start += err.end
                continue
            parts.append(text)
            start += used
            if last or used == 0:  # the rest is an incomplete sequence: kept for the next call
                break
        return "".join(parts), start

    # The state protocol io.IncrementalNewlineDecoder expects of the decoder it wraps.
    def reset(self) -> None:
        self._pending = b""

    def getstate(self) -> tuple[bytes, int]:
        return self._pending, 0

    def setstate(self, state: tuple[bytes, int]) -> None:
        self._pending = state[0]


class TextStream:
    """Decoded text of a binary stream, read in chunks of about `READ_BYTES` bytes: universal
    newlines (CRLF and CR read as LF), the byte-order mark removed, undecodable sequences marked
    with `UNDECODABLE` (`LineReader` repairs them; `read_all` callers use `repair_undecodable`)."""

    def __init__(self, binary: BinaryIO, encoding: str, head: bytes):
        codec, bom = byte_order(encoding, head)
        if bom:
            binary.read(bom)
        self._binary = binary
        self._decoder = RepairingDecoder(codec)
        self._lines = io.IncrementalNewlineDecoder(self._decoder, translate=True)
        self._read_bytes = READ_BYTES

    @property
    def replaced(self) -> int:
        """Undecodable sequences met so far."""
        return self._decoder.replaced

    def read(self) -> str:
        """The next chunk of text; "" only at the end."""
        while True:
            data = self._binary.read(self._read_bytes)
            text = self._lines.decode(data, final=not data)
            if text or not data:
                return text

    def read_all(self) -> str:
        return "".join(iter(self.read, ""))


def repair_undecodable(text: str) -> tuple[str, int]:
    """(`text` with each `UNDECODABLE` mark replaced by U+FFFD, how many there were)."""
    n = text.count(UNDECODABLE)
    return (text.replace(UNDECODABLE, "\ufffd"), n) if n else (text, 0)


# ------------------------------------------------------------------ lines


class LineReader:
    """Lines of a decoded text stream, read in chunks: NUL characters removed and undecodable
    sequences replaced by U+FFFD, both counted with their line numbers; a line longer than the
    limit comes in pieces, so memory stays bounded."""

    def __init__(self, stream: TextStream, name: str, report: DirtyInputReport):
        self.stream = stream
        self.name = name
        self.report = report

    def lines(self, limit: int) -> Iterator[tuple[int, str, bool]]:
        """Yield (line number, text without its newline, complete). A line longer than `limit`
        comes as several pieces with the same number; only its last piece has complete=True."""
        read = self.stream.read
        stream = self.stream
        carry = ""
        lineno = 1
        while True:
            chunk = read()
            if not chunk:
                break
            if "\x00" in chunk or (stream.replaced and UNDECODABLE in chunk):
                chunk = self._repair(chunk, lineno)
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

    def chunks(self) -> Iterator[str]:
        """The whole text, unsplit, in chunks of about `READ_BYTES`: NUL characters removed and
        undecodable sequences replaced by U+FFFD, both counted with their line numbers."""
        stream = self.stream
        lineno = 1
        while True:
            chunk = stream.read()
            if not chunk:
                return
            newlines = chunk.count("\n")
            if "\x00" in chunk or (stream.replaced and UNDECODABLE in chunk):
                chunk = self._repair(chunk, lineno)
            lineno += newlines
            yield chunk

    def _repair(self, chunk: str, lineno: int) -> str:
        """`chunk` (starting on line `lineno`) without NULs and with U+FFFD for undecodable bytes."""
        for char, reason, verb in (("\x00", "nul_bytes", "removed"), (UNDECODABLE, "undecodable_bytes", "replaced")):
            if char in chunk:
                for i, line in enumerate(chunk.split("\n")):
                    n = line.count(char)
                    if n:
                        self.report.repair(reason, (self.name, lineno + i), f"{n} {verb}", n)
        return chunk.replace("\x00", "").replace(UNDECODABLE, "\ufffd")
