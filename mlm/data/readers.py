"""One document stream per input format: what a source is, and how each format reads it.

Every format turns one source into `(where, text)` documents, where `text` is a str (a line, a
record) or an iterable of raw chunks that together form one long document (a very long line, a
paragraph), consumed lazily so no document is held whole. `open_documents` does what all file
formats share (open, sniff compression, guess the encoding) and then hands the file to its
format's reader, chosen by extension (`FILE_FORMATS`) or, for binary formats, by magic bytes.

Adding a format is one reader function and one `FileFormat` entry: a text format's reader gets a
`TextInput` (decoded, repaired lines via `.lines(limit)`), a binary one a `SourceInput`.
"""
from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from mlm.data.decoding import (LineReader, TextStream, compression_of, decompressor, guess_encoding,
                               repair_undecodable, strip_compression_suffix)
from mlm.data.fasta import read_fasta
from mlm.data.report import DirtyInputReport, Location
from mlm.errors import UserError

if TYPE_CHECKING:  # type hints only: mlm.config imports the model package
    from mlm.config import DataConfig

Document = tuple  # (where: Location, text: str | Iterable[str])

_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass
class Source:
    """One input: a file, or a Hugging Face dataset (by name, or a `save_to_disk` folder)."""

    kind: str  # "file" | "hf"
    name: str  # shown in messages: the absolute path, or the dataset name
    text_field: str = "text"
    size: int = 0
    mtime_ns: int = 0
    extra: dict = field(default_factory=dict)

    def fingerprint(self) -> dict:
        """What identifies this input in the cache key (a change means the cache is stale)."""
        if self.kind == "file":
            return {"path": self.name, "size": self.size, "mtime_ns": self.mtime_ns, "field": self.text_field}
        return {"dataset": self.name, "field": self.text_field, **self.extra}


class ReadProgress:
    """How many bytes of the corpus the readers are past (for the progress bar only): the sizes of
    the finished sources plus the position in the current one."""

    def __init__(self) -> None:
        self.finished_bytes = 0
        self._tell: Callable[[], int] | None = None
        self._offset = 0

    def follow(self, tell: Callable[[], int]) -> None:
        """Take the position in the current source from `tell()` (a file's byte position)."""
        self._tell = tell

    def at(self, offset: int) -> None:
        """The position in the current source is `offset` bytes (estimated, e.g. from rows read)."""
        self._tell, self._offset = None, offset

    def source_done(self, size: int) -> None:
        self.finished_bytes += size
        self._tell, self._offset = None, 0

    def bytes_done(self) -> int:
        if self._tell is None:
            return self.finished_bytes + self._offset
        try:
            return self.finished_bytes + int(self._tell())
        except (OSError, ValueError):  # the file is already closed
            return self.finished_bytes


@dataclass
class SourceInput:
    """What a reader gets: the source, the data settings, where to report dirty input and progress."""

    source: Source
    settings: DataConfig
    report: DirtyInputReport
    progress: ReadProgress


@dataclass
class TextInput(SourceInput):
    """A text file, decompressed and decoded, as a text format's reader gets it."""

    stream: TextStream
    sample: bytes  # the first (decompressed) bytes, for sniffing
    encoding: str  # the Python codec name the text is decoded with

    def lines(self, limit: int) -> Iterator[tuple[int, str, bool]]:
        """(line number, text, complete): see `LineReader.lines`."""
        return LineReader(self.stream, self.source.name, self.report).lines(limit)

    def chunks(self) -> Iterator[str]:
        """The whole text in repaired chunks: see `LineReader.chunks`."""
        return LineReader(self.stream, self.source.name, self.report).chunks()


# ------------------------------------------------------------------ text formats


def read_txt(file: TextInput) -> Iterator[Document]:
    """A document per line, per blank-line separated paragraph, or per file (data.txt_documents)."""
    if file.settings.txt_documents == "paragraph":
        return _paragraph_documents(file)
    if file.settings.txt_documents == "file":
        return _file_document(file)
    return _line_documents(file)


def _file_document(file: TextInput) -> Iterator[Document]:
    """The whole file as one document, line ends as "\n": a str when it fits in data.max_chunk_chars,
    else its chunks, read as they are consumed."""
    chunks = file.chunks()
    head: list[str] = []
    size = 0
    for chunk in chunks:
        head.append(chunk)
        size += len(chunk)
        if size > file.settings.max_chunk_chars:
            yield (file.source.name, 1), itertools.chain(head, chunks)
            return
    if head:
        yield (file.source.name, 1), "".join(head)


def _line_documents(file: TextInput) -> Iterator[Document]:
    name = file.source.name
    lines = file.lines(file.settings.max_chunk_chars)
    for lineno, text, complete in lines:
        if complete:
            yield (name, lineno), text
        else:  # a very long line: its pieces are read as they are consumed
            yield (name, lineno), _rest_of_line(text, lines)


def _rest_of_line(first: str, lines: Iterator[tuple[int, str, bool]]) -> Iterator[str]:
    yield first
    for _, text, complete in lines:
        yield text
        if complete:
            return


def _paragraph_documents(file: TextInput) -> Iterator[Document]:
    name = file.source.name
    lines = file.lines(file.settings.max_chunk_chars)
    for lineno, text, complete in lines:
        if complete and not text.strip():
            continue  # blank lines between paragraphs
        yield (name, lineno), _rest_of_paragraph(text, complete, lines)


def _rest_of_paragraph(first: str, complete: bool, lines: Iterator[tuple[int, str, bool]]) -> Iterator[str]:
    yield first
    if complete:
        yield "\n"
    at_line_start = complete
    for _, text, complete in lines:
        if at_line_start and complete and not text.strip():
            return  # a blank line ends the paragraph
        yield text
        if complete:
            yield "\n"
        at_line_start = complete


def read_json(file: TextInput) -> Iterator[Document]:
    """A .json file: one array of records when it starts with "[", else JSON Lines."""
    if file.sample.decode(file.encoding, "ignore").lstrip("\ufeff \t\r\n")[:1] == "[":
        return _json_array_documents(file)
    return read_json_lines(file)


def read_json_lines(file: TextInput) -> Iterator[Document]:
    """One JSON object per line, the text in its text field."""
    name, field_name, report = file.source.name, file.source.text_field, file.report
    loads = json.loads
    lines = file.lines(file.settings.max_record_chars)
    for lineno, line, complete in lines:
        where = (name, lineno)
        if not complete:
            for _, _, complete in lines:
                if complete:
                    break
            report.skip("record_too_long", where)
            continue
        if not line.strip():
            report.skip("blank", where)
            continue
        try:
            record = loads(line)
        except ValueError as err:
            report.skip("malformed_json", where, str(err).splitlines()[0][:120])
            continue
        text = record_text(record, field_name, where, report)
        if text is None:
            continue
        if _SURROGATE_ESCAPE.search(line) and _SURROGATE.search(text):
            text = _SURROGATE.sub("\ufffd", text)
            report.repair("lone_surrogates", where)
        yield where, text


def _json_array_documents(file: TextInput) -> Iterator[Document]:
    src, report, limit = file.source, file.report, file.settings.max_record_chars
    if src.size > limit:
        raise UserError(f"{src.name}: a JSON array file of {src.size:,} bytes is larger than "
                        f"data.max_record_chars ({limit:,}); convert it to JSON Lines (one object per line)")
    text, undecodable = repair_undecodable(file.stream.read_all())
    if undecodable:
        report.repair("undecodable_bytes", (src.name,), f"{undecodable} replaced", undecodable)
    try:
        data = json.loads(text)
    except ValueError as err:
        raise UserError(f"{src.name}: invalid JSON ({str(err).splitlines()[0]})") from None
    if not isinstance(data, list):
        raise UserError(f"{src.name}: expected a JSON array of objects or JSON Lines")
    for i, record in enumerate(data):
        where = (src.name, i + 1, "record")
        value = record_text(record, src.text_field, where, report)
        if value is not None:
            if _SURROGATE.search(value):
                value = _SURROGATE.sub("\ufffd", value)
                report.repair("lone_surrogates", where)
            yield where, value


def record_text(record: Any, field_name: str, where: Location, report: DirtyInputReport) -> str | None:
    """The text field of a JSON record; None (reported) when it is missing or not a string."""
    if not isinstance(record, dict) or record.get(field_name) is None:
        report.skip("missing_field", where, f"no {field_name!r}")
        return None
    text = record[field_name]
    if not isinstance(text, str):
        report.skip("field_not_text", where, f"{field_name!r} is {type(text).__name__}")
        return None
    return text


# ------------------------------------------------------------------ binary formats and datasets


def read_parquet(file: SourceInput) -> Iterator[Document] | None:
    """The text column of a parquet file, one row group batch at a time; None when it has no rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    name, field_name = file.source.name, file.source.text_field
    try:
        parquet = pq.ParquetFile(name)
    except Exception as err:  # pyarrow raises ArrowInvalid/OSError with long messages
        raise UserError(f"{name}: not a readable parquet file ({str(err).splitlines()[0][:200]})") from None
    schema = parquet.schema_arrow
    if field_name not in schema.names:
        raise UserError(f"{name}: no column {field_name!r} (columns: {', '.join(schema.names)}); "
                        "set data.text_field")
    column_type = schema.field(field_name).type
    if pa.types.is_dictionary(column_type):
        column_type = column_type.value_type
    is_text = pa.types.is_string(column_type) or pa.types.is_large_string(column_type) or \
        getattr(pa.types, "is_string_view", lambda t: False)(column_type)
    if not is_text:
        raise UserError(f"{name}: column {field_name!r} has type {column_type}, not text; set data.text_field")
    file.progress.at(0)
    if parquet.metadata.num_rows == 0:
        file.report.skip("empty_file", (name,), "parquet file with no rows")
        return None
    return _parquet_rows(parquet, file)


def _parquet_rows(parquet: Any, file: SourceInput) -> Iterator[Document]:
    name, field_name, size = file.source.name, file.source.text_field, file.source.size
    total_rows = parquet.metadata.num_rows
    row = 0
    for batch in parquet.iter_batches(batch_size=1024, columns=[field_name]):
        for value in batch.column(0).to_pylist():
            row += 1
            if value is None:
                file.report.skip("missing_field", (name, row, "row"), f"null {field_name!r}")
                continue
            yield (name, row, "row"), value
        file.progress.at(size * row // total_rows)


def read_hf_dataset(file: SourceInput) -> Iterator[Document]:
    """The text column of a Hugging Face dataset: a `save_to_disk` folder, or a name (streamed)."""
    try:
        import datasets
    except ImportError:
        raise UserError("data.hf_dataset needs the datasets package: pip install datasets") from None
    src, split = file.source, file.settings.hf_split
    if src.extra.get("folder"):
        try:
            dataset = datasets.load_from_disk(src.name)
        except Exception as err:
            raise UserError(f"{src.name}: not a dataset folder written by save_to_disk "
                            f"({str(err).splitlines()[0][:200]})") from None
        if isinstance(dataset, datasets.DatasetDict):
            if split not in dataset:
                raise UserError(f"{src.name}: no split {split!r} (splits: {', '.join(dataset)}); set data.hf_split")
            dataset = dataset[split]
    else:
        try:
            dataset = datasets.load_dataset(src.name, src.extra.get("config") or None, split=split, streaming=True)
        except Exception as err:
            raise UserError(f"data.hf_dataset {src.name!r}: cannot load it ({_first_line(err)})") from None
    columns = getattr(dataset, "column_names", None)
    if columns is not None and src.text_field not in columns:
        raise UserError(f"{src.name}: no column {src.text_field!r} (columns: {', '.join(columns)}); "
                        "set data.text_field")
    if columns is not None and hasattr(dataset, "select_columns"):
        dataset = dataset.select_columns([src.text_field])
    return _dataset_rows(dataset, file)


def _dataset_rows(dataset: Any, file: SourceInput) -> Iterator[Document]:
    name, field_name, report = file.source.name, file.source.text_field, file.report
    total = len(dataset) if hasattr(dataset, "__len__") else 0
    batches = iter(dataset.iter(batch_size=1000))
    row = 0
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            break
        except Exception as err:
            raise UserError(f"data.hf_dataset {name!r}: failed while reading record {row + 1} "
                            f"({_first_line(err)})") from None
        values = batch.get(field_name)
        if values is None:
            raise UserError(f"{name}: records have no {field_name!r} field; set data.text_field")
        for value in values:
            row += 1
            where = (name, row, "record")
            if value is None:
                report.skip("missing_field", where, f"null {field_name!r}")
            elif not isinstance(value, str):
                report.skip("field_not_text", where, f"{field_name!r} is {type(value).__name__}")
            else:
                yield where, value
        if total:
            file.progress.at(file.source.size * row // total)


def _first_line(err: Exception) -> str:
    return str(err).splitlines()[0][:200] if str(err) else type(err).__name__


# ------------------------------------------------------------------ the format registry


@dataclass(frozen=True)
class FileFormat:
    """A file format: its extensions and its reader. A binary format (`magic` set) is recognised by
    its first bytes whatever the name, and reads the file itself; a text format's reader gets the
    decompressed, decoded text."""

    name: str
    extensions: tuple[str, ...]
    read: Callable[[Any], Iterable[Document] | None]
    magic: bytes | None = None


FILE_FORMATS = (
    FileFormat("txt", (".txt", ".text"), read_txt),
    FileFormat("jsonl", (".jsonl", ".ndjson"), read_json_lines),
    FileFormat("json", (".json",), read_json),
    FileFormat("parquet", (".parquet",), read_parquet, magic=b"PAR1"),
    FileFormat("fasta", (".fasta", ".fa", ".faa", ".fna", ".ffn", ".fas"), read_fasta),
)
DEFAULT_FORMAT = FILE_FORMATS[0]  # a file named explicitly with another extension is text
KNOWN_EXTENSIONS = tuple(ext for fmt in FILE_FORMATS for ext in fmt.extensions)


def format_of(path: str) -> FileFormat:
    """The format a file's extension names (after removing a compression suffix); text when none does."""
    base = strip_compression_suffix(os.path.basename(path))
    for fmt in FILE_FORMATS:
        if base.endswith(fmt.extensions):
            return fmt
    return DEFAULT_FORMAT


def _binary_format_of(head: bytes) -> FileFormat | None:
    for fmt in FILE_FORMATS:
        if fmt.magic is not None and head.startswith(fmt.magic):
            return fmt
    return None


def open_documents(source: Source, settings: DataConfig, report: DirtyInputReport, progress: ReadProgress,
                   stack: contextlib.ExitStack) -> Iterable[Document] | None:
    """The documents of one source, or None when it has nothing to read (empty or binary; reported).
    Files opened stay open until `stack` closes."""
    opened = SourceInput(source, settings, report, progress)
    if source.kind == "hf":
        return read_hf_dataset(opened)
    name = source.name
    try:
        raw = stack.enter_context(open(name, "rb", buffering=1 << 20))
    except OSError as err:
        raise UserError(f"{name}: cannot read ({err.strerror})") from None
    head = raw.peek(8)[:8]
    if not head:
        report.skip("empty_file", (name,))
        return None
    fmt = format_of(name)
    binary = _binary_format_of(head)
    if binary is not None:
        return binary.read(opened)
    compression = compression_of(head)
    if fmt.magic is not None:
        raise UserError(f"{name}: not a {fmt.name} file (no {fmt.magic.decode()} header"
                        + (f"; compressed {fmt.name} files are not supported, decompress it)" if compression
                           else ")"))
    stream: Any = raw
    if compression:
        stream = io.BufferedReader(decompressor(compression, raw, name), buffer_size=1 << 20)
        stack.callback(stream.close)
    progress.follow(raw.tell)
    sample = stream.peek(65536)[:65536]
    if not sample:
        report.skip("empty_file", (name,), f"empty {compression} stream")
        return None
    binary = _binary_format_of(sample)
    if binary is not None:
        raise UserError(f"{name}: compressed {binary.name} files are not supported; decompress it")
    guess = guess_encoding(sample)
    if guess.encoding is None:
        report.skip(guess.reason or "binary_file", (name,))
        return None
    if guess.reason:
        report.repair(guess.reason, (name,), guess.detail)
    text = TextInput(source, settings, report, progress, TextStream(stream, guess.encoding, sample), sample,
                     guess.encoding)
    return fmt.read(text)
