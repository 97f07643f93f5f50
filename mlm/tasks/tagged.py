"""Reading tagged sentences for token classification: JSON Lines and CoNLL-style column files.

    {"tokens": ["Guido", "wrote", "Python"], "tags": ["B-PER", "O", "B-MISC"]}     (.jsonl, .json)

    Guido   B-PER            (any other extension: one word per line, whitespace-separated
    wrote   O                 columns, the word first and the tag last; a blank line ends a
    Python  B-MISC            sentence; -DOCSTART- lines are skipped)

Tags are BIO (IOB2): `O`, `B-<type>`, `I-<type>`, and an entity starts with B-. The label set is
read from the training file (every type gets both its B- and I- tag). Every mistake — an
unreadable line, a missing field, words and tags of different lengths, a tag that is not BIO, an
I- that continues nothing, a type that training never saw — is one `UserError` naming the file
and line, so a user fixes the data, not the code.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from mlm.errors import UserError
from mlm.tasks.metrics import OUTSIDE, split_tag
from mlm.tasks.records import iter_records, require_file

JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")
DOCSTART = "-DOCSTART-"


@dataclass
class TaggedData:
    """Sentences as word lists with one tag per word; `lines[i]` is where sentence i starts."""
    words: list[list[str]]
    tags: list[list[str]]
    source: str
    lines: list[int] = field(default_factory=list)

    def subset(self, indices: Sequence[int], suffix: str) -> "TaggedData":
        return TaggedData([self.words[i] for i in indices], [self.tags[i] for i in indices],
                          f"{self.source} ({suffix})", [self.lines[i] for i in indices] if self.lines else [])

    def where(self, i: int) -> str:
        """"file:line" of sentence i (for messages)."""
        return f"{self.source}:{self.lines[i]}" if self.lines else f"{self.source} (sentence {i + 1})"


def read_tagged(path: str | Path, tokens_field: str = "tokens", tags_field: str = "tags") -> TaggedData:
    """Read a tagged file (JSON Lines / JSON list by extension, else CoNLL columns) and check its tags."""
    path = require_file(path)
    if path.suffix.lower() in JSON_SUFFIXES:
        data = _read_json_sentences(path, tokens_field, tags_field)
    else:
        data = _read_conll(path)
    if not data.words:
        raise UserError(f"{path}: no sentences")
    for i, tags in enumerate(data.tags):
        check_bio(tags, data.where(i))
    return data


def _read_json_sentences(path: Path, tokens_field: str, tags_field: str) -> TaggedData:
    words: list[list[str]] = []
    tags: list[list[str]] = []
    lines: list[int] = []
    for n, rec in iter_records(path):
        where = f"{path}:{n}"
        if not isinstance(rec, dict):
            raise UserError(f"{where}: expected an object with {tokens_field!r} and {tags_field!r}, "
                            f"got {type(rec).__name__}")
        for key in (tokens_field, tags_field):
            if key not in rec or rec[key] is None:
                raise UserError(f"{where}: no {key!r} field (fields: {', '.join(map(str, rec))}); "
                                "set data.tokens_field / data.tags_field")
        sentence = _string_list(rec[tokens_field], where, tokens_field, "words")
        labels = _string_list(rec[tags_field], where, tags_field, "tags like B-PER (integer tags need their names)")
        if len(sentence) != len(labels):
            raise UserError(f"{where}: {len(sentence)} words but {len(labels)} tags")
        if not sentence:
            raise UserError(f"{where}: a sentence with no words")
        bad = next((w for w in sentence if not w.strip()), None)
        if bad is not None:
            raise UserError(f"{where}: an empty or blank word ({bad!r}) in {tokens_field!r}")
        words.append(sentence)
        tags.append([t.strip() for t in labels])
        lines.append(n)
    return TaggedData(words, tags, str(path), lines)


def _string_list(value: Any, where: str, key: str, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UserError(f"{where}: {key!r} must be a list of strings ({what}), got {value!r:.60}")
    return value


def _conll_lines(path: Path) -> Iterator[tuple[int, str]]:
    try:
        with open(path, encoding="utf-8") as fh:
            yield from enumerate(fh, 1)
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a UTF-8 text file") from None


def _read_conll(path: Path) -> TaggedData:
    data = TaggedData([], [], str(path), [])
    words: list[str] = []
    tags: list[str] = []
    start = 0

    def close() -> None:
        if words:
            data.words.append(list(words))
            data.tags.append(list(tags))
            data.lines.append(start)
            words.clear()
            tags.clear()

    for n, line in _conll_lines(path):
        columns = line.split()
        if not columns or columns[0] == DOCSTART:
            close()
            continue
        if len(columns) < 2:
            raise UserError(f"{path}:{n}: expected a word and a tag separated by whitespace, got {line.strip()!r:.60} "
                            "(CoNLL format: one word per line, the tag in the last column, a blank line "
                            "between sentences)")
        if not words:
            start = n
        words.append(columns[0])
        tags.append(columns[-1])
    close()
    return data


def check_bio(tags: Sequence[str], where: str) -> None:
    """Every tag is O, B-<type> or I-<type>, and every I-<type> continues a <type> entity."""
    previous = OUTSIDE
    for i, tag in enumerate(tags):
        if tag != OUTSIDE and (len(tag) < 3 or tag[0] not in "BI" or tag[1] != "-"):
            raise UserError(f"{where}: tag {tag!r} (word {i + 1}) is not BIO: tags are O, B-<type> or I-<type>")
        prefix, kind = split_tag(tag)
        if prefix == "I" and split_tag(previous)[1] != kind:
            raise UserError(f"{where}: tag {tag!r} (word {i + 1}) follows {previous!r}; in BIO (IOB2) an entity "
                            f"starts with B-{kind} (convert IOB1 data: an I- that starts an entity becomes B-)")
        previous = tag


def tag_names(data: TaggedData) -> list[str]:
    """The label set of a training file: O, then B-/I- of every entity type, types sorted."""
    kinds = sorted({split_tag(t)[1] for tags in data.tags for t in tags if t != OUTSIDE})
    return [OUTSIDE] + [f"{p}-{k}" for k in kinds for p in "BI"]


def encode_tags(data: TaggedData, names: Sequence[str]) -> list[list[int]]:
    """Tag indices in `names`; a type the training data does not have is a UserError."""
    index = {n: i for i, n in enumerate(names)}
    out = []
    for i, tags in enumerate(data.tags):
        unknown = next((t for t in tags if t not in index), None)
        if unknown is not None:
            raise UserError(f"{data.where(i)}: tag {unknown!r}, which the training data does not have "
                            f"(tags: {', '.join(names)})")
        out.append([index[t] for t in tags])
    return out
