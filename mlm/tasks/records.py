"""Reading labelled examples: JSON Lines, a JSON list, or CSV/TSV with a header row.

One text (or a text pair) per record with one label: a class name for classification, a number
for regression (`numeric=True`). Tagged sentences for token classification are read by
`mlm.tasks.tagged`. Every mistake (missing file, bad line, missing field, a label dev/test has that training lacks)
is one `UserError` naming the file and line, so a user fixes the data, not the code.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from mlm.errors import UserError

RECORD_SUFFIXES = (".jsonl", ".json", ".ndjson", ".csv", ".tsv")


@dataclass
class LabeledData:
    """Texts (and optional second segments) with one label each: class names as strings, or floats
    for regression."""
    texts: list[str]
    pairs: list[str] | None
    labels: list[Any]
    source: str

    def subset(self, indices: Sequence[int], suffix: str) -> "LabeledData":
        return LabeledData([self.texts[i] for i in indices],
                           [self.pairs[i] for i in indices] if self.pairs is not None else None,
                           [self.labels[i] for i in indices], f"{self.source} ({suffix})")


def iter_records(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, record) from JSONL, a JSON list, or CSV/TSV with a header row."""
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv"):
            with open(path, encoding="utf-8", newline="") as fh:
                reader = csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ",")
                for row in reader:
                    yield reader.line_num, row
            return
        if suffix not in (".jsonl", ".json", ".ndjson"):
            raise UserError(f"{path}: unknown format {suffix!r}; use .jsonl, .json, .csv or .tsv")
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a UTF-8 text file") from None
    if suffix == ".json" and text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except ValueError as err:
            raise UserError(f"{path}: invalid JSON ({err})") from None
        yield from ((i + 1, r) for i, r in enumerate(records))
        return
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield n, json.loads(line)
            except ValueError as err:
                raise UserError(f"{path}:{n}: invalid JSON ({err.msg})") from None


def require_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: labeled data file not found")
    return path


def read_labeled(path: str | Path, text_field: str = "text", label_field: str = "label",
                 pair_field: str = "", numeric: bool = False) -> LabeledData:
    """Read a labelled file; every mistake is one error naming the file, line and field.
    `numeric`: labels are finite numbers (regression targets), read as floats."""
    path = require_file(path)
    texts: list[str] = []
    pairs: list[str] = []
    labels: list[Any] = []
    for n, rec in iter_records(path):
        if not isinstance(rec, dict):
            raise UserError(f"{path}:{n}: expected an object with {text_field!r} and {label_field!r}, got "
                            f"{type(rec).__name__}")
        for key in (text_field, label_field) + ((pair_field,) if pair_field else ()):
            if key not in rec or rec[key] is None:
                raise UserError(f"{path}:{n}: no {key!r} field (fields: {', '.join(map(str, rec))}); "
                                f"set data.text_field / data.label_field / data.text_pair_field")
        text = rec[text_field]
        if not isinstance(text, str):
            raise UserError(f"{path}:{n}: {text_field!r} must be a string, got {text!r:.60}")
        read_label = _label_value if numeric else _label_text
        labels.append(read_label(rec[label_field], path, n, label_field))
        texts.append(text)
        if pair_field:
            pairs.append(str(rec[pair_field]))
    if not texts:
        raise UserError(f"{path}: no examples")
    return LabeledData(texts, pairs if pair_field else None, labels, str(path))


def _label_text(label: Any, path: Path, line: int, label_field: str) -> str:
    """A class label as text: strings stripped, integral numbers as '3'; anything else refused."""
    if isinstance(label, bool) or not isinstance(label, (str, int, float)) or (
            isinstance(label, float) and not label.is_integer()):
        raise UserError(f"{path}:{line}: {label_field!r} must be a string or an integer, got {label!r:.60}")
    return label.strip() if isinstance(label, str) else str(int(label))


def _label_value(label: Any, path: Path, line: int, label_field: str) -> float:
    """A regression target: a finite number, or a string holding one (CSV cells are strings)."""
    try:
        value = float(label) if not isinstance(label, bool) else float("nan")
    except (TypeError, ValueError):
        value = float("nan")
    if not math.isfinite(value):
        raise UserError(f"{path}:{line}: {label_field!r} must be a finite number for regression, got {label!r:.60}")
    return value


def label_names(labels: Sequence[str]) -> list[str]:
    """Sorted label set: numerically when every label is an integer, else alphabetically."""
    names = set(labels)
    if all(n.lstrip("-").isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)


def encode_labels(data: LabeledData, names: Sequence[str]) -> list[int]:
    """Label indices in `names`; a label the training data does not have is a UserError."""
    index = {n: i for i, n in enumerate(names)}
    out = []
    for i, label in enumerate(data.labels):
        if label not in index:
            raise UserError(f"{data.source}: example {i + 1} has label {label!r}, which the training data "
                            f"does not have (labels: {', '.join(names)})")
        out.append(index[label])
    return out
