"""mlm.data.readers: one document stream per format (text lines and paragraphs, JSON Lines, JSON
arrays, parquet, Hugging Face datasets), the format registry, and each format's dirty input."""
from __future__ import annotations

import json

import numpy as np
import pytest

from mlm.data.readers import FILE_FORMATS, KNOWN_EXTENSIONS, format_of
from mlm.errors import UserError
from tests.data.data_helpers import SEP_ID, check_stream, make_cfg, make_docs, run, write_lines

# ------------------------------------------------------------------------------- the registry


def test_the_format_is_named_by_the_extension_without_compression_suffix():
    assert format_of("/x/a.txt").name == "txt"
    assert format_of("/x/a.JSONL.gz").name == "jsonl"
    assert format_of("/x/a.ndjson.zst").name == "jsonl"
    assert format_of("/x/a.json").name == "json"
    assert format_of("/x/a.parquet").name == "parquet"
    assert format_of("/x/notes.md").name == "txt"  # named explicitly with another extension: text
    assert KNOWN_EXTENSIONS == (".txt", ".text", ".jsonl", ".ndjson", ".json", ".parquet",
                                ".fasta", ".fa", ".faa", ".fna", ".ffn", ".fas")
    assert format_of("/x/P12345.FA.gz").name == "fasta"
    assert [f.name for f in FILE_FORMATS if f.magic] == ["parquet"]


# ------------------------------------------------------------------------------- text: lines and paragraphs


def test_plain_lines(tmp_path, tok_path):
    docs = make_docs(60)
    f = write_lines(tmp_path / "a.txt", docs)
    prepared, messages = run(make_cfg(tmp_path, [f], tok_path))
    check_stream(prepared, docs)
    assert prepared.stats["skipped"] == {} and prepared.stats["repaired"] == {}
    assert prepared.train.dtype == np.uint16
    assert messages == []


def test_last_line_without_newline(tmp_path, tok_path):
    docs = make_docs(12, seed=10)
    f = tmp_path / "nonl.txt"
    f.write_text("\n".join(docs))
    prepared, _ = run(make_cfg(tmp_path, [f], tok_path))
    check_stream(prepared, docs)


def test_paragraph_documents(tmp_path, tok_path):
    paragraphs = ["\n".join(make_docs(3, seed=s)) for s in range(15)]
    f = tmp_path / "paras.txt"
    f.write_text("\n\n  \n".join(paragraphs) + "\n\n\n")
    prepared, _ = run(make_cfg(tmp_path, [f], tok_path, txt_documents="paragraph"))
    check_stream(prepared, paragraphs)


def test_literal_special_token_strings_stay_text(tmp_path, tok_path):
    docs = ["the [MASK] and [CLS] of the [SEP] world [PAD]"] * 3 + make_docs(20, seed=7)
    f = write_lines(tmp_path / "special.txt", docs)
    prepared, _ = run(make_cfg(tmp_path, [f], tok_path))
    check_stream(prepared, docs)
    body = prepared.train[np.arange(len(prepared.train))][:, 1:]
    assert not np.isin(body, [0, 2, 4]).any()  # no [PAD], [CLS] or [MASK] from the text
    assert (body == SEP_ID).sum() <= prepared.stats["documents"]


def test_empty_file_is_skipped_with_a_warning(tmp_path, tok_path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    blank = tmp_path / "blank.txt"
    blank.write_text("\n   \n\n")
    docs = make_docs(20, seed=11)
    good = write_lines(tmp_path / "good.txt", docs)
    prepared, messages = run(make_cfg(tmp_path, [empty, good, blank], tok_path))
    check_stream(prepared, docs)
    assert prepared.stats["skipped"]["empty_file"] == 1
    assert prepared.stats["skipped"]["no_documents"] == 1
    assert any(str(empty) in m and "empty file" in m for m in messages)
    assert any(str(blank) in m for m in messages)


def test_only_empty_files_is_an_error_naming_them(tmp_path, tok_path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(UserError, match="no usable text in .*empty.txt.*empty_file"):
        run(make_cfg(tmp_path, [empty], tok_path))
    with pytest.raises(UserError, match="no usable text in .*empty.txt"):  # training a tokenizer: same error
        run(make_cfg(tmp_path, [empty]))


# ------------------------------------------------------------------------------- JSON


def test_jsonl_dirty_records(tmp_path, tok_path):
    docs = make_docs(12, seed=21)
    lines = [json.dumps({"text": t, "id": i}) for i, t in enumerate(docs)]
    lines[1] = '{"text": "unterminated'  # line 2: malformed
    lines[3] = json.dumps({"body": "no text field"})  # line 4
    lines[5] = json.dumps({"text": None})  # line 6
    lines[7] = json.dumps({"text": ["a", "list"]})  # line 8
    lines[9] = json.dumps(["not", "an", "object"])  # line 10
    lines.insert(11, "")  # a blank line is ignored (counted as blank)
    f = tmp_path / "recs.jsonl"
    f.write_text("\n".join(lines) + "\n")
    prepared, messages = run(make_cfg(tmp_path, [f], tok_path))
    kept = [t for i, t in enumerate(docs) if i not in (1, 3, 5, 7, 9)]
    check_stream(prepared, kept)
    skipped = prepared.stats["skipped"]
    assert skipped["malformed_json"] == 1
    assert skipped["missing_field"] == 3
    assert skipped["field_not_text"] == 1
    assert any(f"{f}:2" in m and "malformed JSON" in m for m in messages)
    assert any(f"{f}:4" in m and "text field" in m for m in messages)


def test_jsonl_custom_field_nul_and_lone_surrogate(tmp_path, tok_path):
    f = tmp_path / "x.json"  # .json holding JSON Lines
    f.write_text(json.dumps({"content": "the world\u0000 of time"}) + "\n"
                 + '{"content": "a lone \\ud800 surrogate"}\n'
                 + json.dumps({"content": "good day to you"}) + "\n")
    prepared, _ = run(make_cfg(tmp_path, [f], tok_path, text_field="content"))
    check_stream(prepared, ["the world of time", "a lone \ufffd surrogate", "good day to you"])
    assert prepared.stats["repaired"]["nul_bytes"] == 1
    assert prepared.stats["repaired"]["lone_surrogates"] == 1


def test_json_line_too_long_is_skipped(tmp_path, tok_path):
    docs = make_docs(6, seed=22)
    lines = [json.dumps({"text": t}) for t in docs]
    lines[2] = json.dumps({"text": "word " * 2000})
    f = tmp_path / "long.jsonl"
    f.write_text("\n".join(lines) + "\n")
    prepared, messages = run(make_cfg(tmp_path, [f], tok_path, max_record_chars=2000))
    check_stream(prepared, docs[:2] + docs[3:])
    assert prepared.stats["skipped"]["record_too_long"] == 1
    assert any(f"{f}:3" in m for m in messages)


def test_json_array_file(tmp_path, tok_path):
    docs = make_docs(10, seed=23)
    f = tmp_path / "arr.json"
    f.write_text(json.dumps([{"text": t} for t in docs] + [{"other": 1}], indent=2))
    prepared, messages = run(make_cfg(tmp_path, [f], tok_path))
    check_stream(prepared, docs)
    assert any("record 11" in m for m in messages)
    bad = tmp_path / "bad.json"
    bad.write_text('[{"text": "a"}, ')
    with pytest.raises(UserError, match="bad.json: invalid JSON"):
        run(make_cfg(tmp_path / "b", [bad], tok_path))


def test_json_array_with_undecodable_bytes_is_repaired_and_counted(tmp_path, tok_path):
    docs = make_docs(10, seed=23)
    f = tmp_path / "arr.json"
    f.write_bytes(json.dumps([{"text": t} for t in docs]).encode().replace(b'"text": "', b'"text": "\xff', 1))
    prepared, messages = run(make_cfg(tmp_path, [f], tok_path))
    check_stream(prepared, ["\ufffd" + docs[0]] + docs[1:])
    assert prepared.stats["repaired"]["undecodable_bytes"] == 1
    assert any(str(f) in m and "U+FFFD" in m for m in messages)


def test_json_array_larger_than_max_record_chars_is_an_error(tmp_path, tok_path):
    f = tmp_path / "big.json"
    f.write_text(json.dumps([{"text": t} for t in make_docs(100, seed=23)]))
    with pytest.raises(UserError, match="big.json: a JSON array file of .* convert it to JSON Lines"):
        run(make_cfg(tmp_path, [f], tok_path, max_record_chars=1000))


# ------------------------------------------------------------------------------- parquet and datasets


def test_parquet(tmp_path, tok_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    docs = make_docs(30, seed=24)
    values = docs[:10] + [None] + docs[10:]
    f = tmp_path / "t.parquet"
    pq.write_table(pa.table({"text": values, "n": list(range(len(values)))}), f, row_group_size=7)
    prepared, messages = run(make_cfg(tmp_path, [f], tok_path))
    check_stream(prepared, docs)
    assert prepared.stats["skipped"]["missing_field"] == 1
    assert any("row 11" in m for m in messages)
    with pytest.raises(UserError, match=r"t.parquet: no column 'body' \(columns: text, n\)"):
        run(make_cfg(tmp_path / "2", [f], tok_path, text_field="body"))
    with pytest.raises(UserError, match=r"t.parquet: column 'n' has type int64, not text"):
        run(make_cfg(tmp_path / "3", [f], tok_path, text_field="n"))
    fake = tmp_path / "fake.parquet"
    fake.write_text("not parquet\n")
    with pytest.raises(UserError, match="fake.parquet: not a parquet file"):
        run(make_cfg(tmp_path / "4", [fake], tok_path))


def test_parquet_is_recognised_by_content_and_empty_parquet_is_skipped(tmp_path, tok_path):
    pa = pytest.importorskip("pyarrow")
    import gzip

    import pyarrow.parquet as pq

    docs = make_docs(30, seed=24)
    misnamed = tmp_path / "table.txt"
    pq.write_table(pa.table({"text": docs}), misnamed)
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), empty)
    prepared, messages = run(make_cfg(tmp_path, [misnamed, empty], tok_path))
    check_stream(prepared, docs)
    assert prepared.stats["skipped"] == {"empty_file": 1}  # not also no_documents
    packed = tmp_path / "packed.parquet"
    packed.write_bytes(gzip.compress(misnamed.read_bytes()))
    with pytest.raises(UserError, match="packed.parquet: not a parquet file .*compressed parquet files are not"):
        run(make_cfg(tmp_path / "2", [packed], tok_path))


def test_hf_dataset_folder(tmp_path, tok_path):
    datasets = pytest.importorskip("datasets")
    docs = make_docs(25, seed=25)
    folder = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": docs, "label": [0] * len(docs)})}) \
        .save_to_disk(str(folder))
    cfg = make_cfg(tmp_path, [], tok_path, hf_dataset=str(folder))
    prepared, _ = run(cfg)
    check_stream(prepared, docs)
    with pytest.raises(UserError, match="no split 'test'"):
        run(make_cfg(tmp_path / "2", [], tok_path, hf_dataset=str(folder), hf_split="test"))
