"""The dirty-input report: every input problem is repaired or skipped, counted, and (mostly) warned about.

A corpus of millions of lines always has some broken ones. Stopping on each would make large
corpora unusable, and repairing silently would hide a broken export, so every case has a reason
name (`SKIP_REASONS`, `REPAIR_REASONS`, the "Dirty input policy" table of README.md), is counted
in `stats["skipped"]` / `stats["repaired"]`, and the first few per file and reason are printed
as warnings naming the file and line.
"""
from __future__ import annotations

import contextlib
from collections import Counter
from typing import Callable, Iterator

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
    "empty_record": "FASTA record without a sequence",
}
REPAIR_REASONS = {
    "undecodable_bytes": "undecodable bytes replaced by U+FFFD",
    "nul_bytes": "NUL characters removed",
    "lone_surrogates": "unpaired UTF-16 surrogates in JSON replaced by U+FFFD",
    "long_document": "document longer than data.max_chunk_chars tokenized in pieces",
    "utf16_without_bom": "decoded as UTF-16 without a byte-order mark",
    "utf16_or_32": "decoded as UTF-16/UTF-32 from its byte-order mark",
}
SILENT_REASONS = frozenset({"blank", "utf16_or_32"})  # counted, never warned about
WARNINGS_PER_FILE = 3  # per file and reason
WARNINGS_PER_REASON = 20  # over all files

Location = tuple
"""Where an event happened: (file,), (file, line) or (file, number, "row" | "record")."""


def describe_location(where: Location | None) -> str:
    """`file`, `file:line`, or `file (row 11)`, as warnings print it."""
    if not where:
        return "?"
    if len(where) == 1:
        return str(where[0])
    if len(where) == 2:
        return f"{where[0]}:{where[1]}"
    return f"{where[0]} ({where[2]} {where[1]})"


class DirtyInputReport:
    """Counts dirty-input events by reason; prints the first few of each kind per file as warnings.

    `log` None counts without printing (the tokenizer-sampling pass reads the corpus a second time).
    """

    def __init__(self, log: Callable[[str], None] | None):
        self.log = log
        self.skipped: Counter = Counter()
        self.repaired: Counter = Counter()
        self._quiet = False
        self._warned_per_file: Counter = Counter()
        self._warned_per_reason: Counter = Counter()

    @property
    def is_quiet(self) -> bool:
        return self._quiet

    @contextlib.contextmanager
    def quiet(self) -> Iterator[None]:
        """Neither count nor warn inside: a resumed run re-reads what an earlier run already counted."""
        self._quiet = True
        try:
            yield
        finally:
            self._quiet = False

    def skip(self, reason: str, where: Location | None, detail: str = "", n: int = 1) -> None:
        if not self._quiet:
            self.skipped[reason] += n
            self._warn(reason, SKIP_REASONS[reason], where, detail)

    def repair(self, reason: str, where: Location | None, detail: str = "", n: int = 1) -> None:
        if not self._quiet:
            self.repaired[reason] += n
            self._warn(reason, REPAIR_REASONS[reason], where, detail)

    def counts(self) -> dict:
        """The counts so far, as plain dicts (what progress.json records)."""
        return {"skipped": dict(self.skipped), "repaired": dict(self.repaired)}

    def restore(self, counts: dict) -> None:
        """Continue from counts recorded by `counts()` (resuming an interrupted prepare)."""
        self.skipped = Counter(counts.get("skipped", {}))
        self.repaired = Counter(counts.get("repaired", {}))

    def _warn(self, reason: str, text: str, where: Location | None, detail: str) -> None:
        if self.log is None or reason in SILENT_REASONS:
            return
        key = (where[0] if where else "", reason)
        self._warned_per_file[key] += 1
        count = self._warned_per_file[key]
        if count <= WARNINGS_PER_FILE and self._warned_per_reason[reason] < WARNINGS_PER_REASON:
            self._warned_per_reason[reason] += 1
            suffix = " (skipped)" if reason in SKIP_REASONS else ""
            self.log(f"warning: {describe_location(where)}: {text}{suffix}{': ' + detail if detail else ''}")
        elif count == WARNINGS_PER_FILE + 1 and self._warned_per_reason[reason] <= WARNINGS_PER_REASON:
            self._warned_per_reason[reason] += 1
            self.log(f"warning: {key[0]}: further '{reason}' warnings not shown (all are counted in the summary)")
