"""Reading tagged sentences: JSON Lines and CoNLL columns give the same data; every mistake in a
file (bad line, missing field, lengths, a tag that is not BIO, an I- that continues nothing, a tag
training never saw) is one UserError naming the file and line."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlm.errors import UserError
from mlm.tasks.tagged import encode_tags, read_tagged, tag_names

SENTENCES = [(["Guido", "van", "Rossum", "wrote", "Python"], ["B-PER", "I-PER", "I-PER", "O", "B-MISC"]),
             (["He", "lives", "in", "Amsterdam", "."], ["O", "O", "O", "B-LOC", "O"])]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_jsonl_and_conll_read_the_same_sentences(tmp_path):
    jsonl = write_jsonl(tmp_path / "a.jsonl", [{"words": w, "ner": t} for w, t in SENTENCES])
    conll = tmp_path / "a.conll"
    conll.write_text("-DOCSTART- -X- -X- O\n\n" + "\n\n".join(
        "\n".join(f"{w} NNP x {t}" for w, t in zip(words, tags)) for words, tags in SENTENCES) + "\n\n\n",
        encoding="utf-8")
    a = read_tagged(jsonl, tokens_field="words", tags_field="ner")
    b = read_tagged(conll)
    assert a.words == b.words == [w for w, _ in SENTENCES] and a.tags == b.tags == [t for _, t in SENTENCES]
    assert b.lines == [3, 9]  # where each sentence starts, for messages
    names = tag_names(a)
    assert names == ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-PER", "I-PER"]  # every type gets B- and I-
    assert encode_tags(a, names)[1] == [0, 0, 0, 1, 0]


@pytest.mark.parametrize("line, message", [
    ('{"tokens": ["a"], "tags": ["O"]}\n{"tokens": ["b"]}', r"bad\.jsonl:2: no 'tags' field"),
    ('{"tokens": ["a", "b"], "tags": ["O"]}', r"bad\.jsonl:1: 2 words but 1 tags"),
    ('{"tokens": ["a"], "tags": [3]}', r"bad\.jsonl:1: 'tags' must be a list of strings"),
    ('{"tokens": ["a", ""], "tags": ["O", "O"]}', r"bad\.jsonl:1: an empty or blank word"),
    ('{"tokens": ["a"], "tags": ["PER"]}', r"bad\.jsonl:1: tag 'PER' \(word 1\) is not BIO"),
    ('{"tokens": ["a"], "tags": ["E-PER"]}', r"bad\.jsonl:1: tag 'E-PER' \(word 1\) is not BIO"),
    ('{"tokens": ["a", "b"], "tags": ["O", "I-PER"]}', r"bad\.jsonl:1: tag 'I-PER' \(word 2\) follows 'O'"),
    ('{"tokens": ["a", "b"], "tags": ["B-LOC", "I-PER"]}', r"follows 'B-LOC'; in BIO \(IOB2\) an entity starts with B-PER"),
    ('{"tokens": ["a"], "tags": ["O"]', r"bad\.jsonl:1: invalid JSON"),
])
def test_json_mistakes_name_the_file_and_line(tmp_path, line, message):
    (tmp_path / "bad.jsonl").write_text(line + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=message):
        read_tagged(tmp_path / "bad.jsonl")


def test_conll_mistakes_and_unknown_tags(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("Guido B-PER\nwrote\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"bad\.txt:2: expected a word and a tag"):
        read_tagged(bad)
    bad.write_bytes(b"Guido B-PER\n\xff\xfe O\n")
    with pytest.raises(UserError, match=r"bad\.txt: not a UTF-8"):
        read_tagged(bad)
    with pytest.raises(UserError, match=r"missing\.conll: labeled data file not found"):
        read_tagged(tmp_path / "missing.conll")
    train = read_tagged(write_jsonl(tmp_path / "train.jsonl", [{"tokens": ["x"], "tags": ["B-PER"]}]))
    test = write_jsonl(tmp_path / "test.jsonl", [{"tokens": ["x"], "tags": ["O"]}, {"tokens": ["y"], "tags": ["B-ORG"]}])
    with pytest.raises(UserError, match=r"test\.jsonl:2: tag 'B-ORG', which the training data does not have"):
        encode_tags(read_tagged(test), tag_names(train))
