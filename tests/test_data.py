"""mlm.data: every dirty-input case, the input formats, BlockDataset and epoch_permutation.

Each test builds its input in a tmp folder and checks the exact token stream of the shards
against an independent tokenization of the documents it should contain.
"""
from __future__ import annotations

import bz2
import codecs
import gzip
import hashlib
import json
import lzma
import pickle
import random
import sys
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from mlm.config import Config, ConfigError, load_config
from mlm.data import BlockDataset, epoch_permutation, prepare_data
from mlm.errors import UserError
from mlm.tokenizer import train_tokenizer

CLS_ID, SEP_ID = 2, 3
WORDS = ("time person year way day thing man world life hand part child eye woman place work week case point "
         "government company number group problem fact be have do say get make go know take see come think look "
         "want give use find tell ask seem feel try leave call good new first last long great little own other old "
         "right big high different small large next early young important few public bad same able to of in for "
         "on with at by from up about into over after the and a that it not he as you this but his they her she "
         "or an will my one all would there their what so out if who which go me when can like no just him").split()


def make_docs(n: int, seed: int = 0, lo: int = 3, hi: int = 40) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))).capitalize() + "." for _ in range(n)]


@pytest.fixture(scope="module")
def tok_path(tmp_path_factory) -> Path:
    tok = train_tokenizer(make_docs(400, seed=99) + ["[ ] ( ) , . ! ? \ufffd"], vocab_size=300)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return path


def make_cfg(tmp_path: Path, files, tok_path: Path | None = None, **data) -> Config:
    cfg = Config(output_dir=str(tmp_path / "run"))
    cfg.log.progress = False
    cfg.data.train_files = [str(f) for f in files]
    cfg.data.seq_len = 16
    cfg.data.validation_fraction = 0.0
    cfg.data.vocab_size = 300
    if tok_path is not None:
        cfg.data.tokenizer = str(tok_path)
    for key, value in data.items():
        setattr(cfg.data, key, value)
    cfg.model.max_seq_len = max(cfg.model.max_seq_len, cfg.data.seq_len)
    cfg.validate()
    return cfg


def run(cfg: Config):
    messages: list[str] = []
    prepared = prepare_data(cfg, log=messages.append)
    return prepared, messages


def split_of(text: str, fraction: float) -> int:
    """The documented split rule: blake2b-64 of the UTF-8 text, as a fraction of 2**64."""
    if fraction <= 0:
        return 0
    u = int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
    return 1 if u / 2 ** 64 < fraction else 0


def check_stream(prepared, docs: list[str], fraction: float = 0.0) -> None:
    """The shards hold exactly: for each split, its documents' tokens each followed by [SEP],
    cut into [CLS] + (seq_len - 1) blocks, only the final partial block dropped."""
    tok = Tokenizer.from_str(prepared.tokenizer.to_str())
    tok.encode_special_tokens = True
    expected: dict[int, list[int]] = {0: [], 1: []}
    ndocs = {0: 0, 1: 0}
    for doc in docs:
        ids = tok.encode(doc, add_special_tokens=False).ids
        if ids:
            s = split_of(doc, fraction)
            expected[s] += ids + [SEP_ID]
            ndocs[s] += 1
    seq_len = prepared.train.seq_len
    for s, (name, ds) in enumerate((("train", prepared.train), ("validation", prepared.validation))):
        blocks = ds[np.arange(len(ds))]
        assert blocks.shape == (len(ds), seq_len)
        assert (blocks[:, 0] == CLS_ID).all()
        body = blocks[:, 1:].reshape(-1).tolist()
        assert CLS_ID not in body
        assert body == expected[s][: len(body)]
        st = prepared.stats["splits"][name]
        assert st["dropped_tail_tokens"] == len(expected[s]) - len(body)
        assert 0 <= st["dropped_tail_tokens"] < seq_len - 1
        assert st["documents"] == ndocs[s]
    assert prepared.stats["documents"] == ndocs[0] + ndocs[1]


def write_lines(path: Path, docs: list[str], newline: str = "\n", encoding: str = "utf-8") -> Path:
    path.write_bytes(newline.join(docs).encode(encoding) + newline.encode(encoding))
    return path


# ------------------------------------------------------------------------------- text encodings


def test_plain_lines(tmp_path, tok_path):
    docs = make_docs(60)
    f = write_lines(tmp_path / "a.txt", docs)
    prepared, messages = run(make_cfg(tmp_path, [f], tok_path))
    check_stream(prepared, docs)
    assert prepared.stats["skipped"] == {} and prepared.stats["repaired"] == {}
    assert prepared.train.dtype == np.uint16
    assert messages == []


def test_crlf_gives_the_same_shards_as_lf(tmp_path, tok_path):
    docs = make_docs(50, seed=1)
    lf = write_lines(tmp_path / "lf.txt", docs)
    crlf = write_lines(tmp_path / "crlf.txt", docs, "\r\n")
    assert b"\r\n" in crlf.read_bytes()
    p1, _ = run(make_cfg(tmp_path / "1", [lf], tok_path))
    p2, _ = run(make_cfg(tmp_path / "2", [crlf], tok_path))
    check_stream(p2, docs)
    assert (p1.train[np.arange(len(p1.train))] == p2.train[np.arange(len(p2.train))]).all()


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be-bom", "utf-32", "utf-8-sig"])
def test_byte_order_marks_are_detected(tmp_path, tok_path, encoding):
    docs = make_docs(30, seed=2) + ["Caf\u00e9 na\u00efve \u00fcber"]
    text = "\n".join(docs) + "\n"
    if encoding == "utf-16-be-bom":
        data = codecs.BOM_UTF16_BE + text.encode("utf-16-be")
    else:
        data = text.encode(encoding)
    f = tmp_path / "bom.txt"
    f.write_bytes(data)
    prepared, _ = run(make_cfg(tmp_path, [f], tok_path))
    check_stream(prepared, docs)
    assert prepared.stats["repaired"].get("undecodable_bytes", 0) == 0
    assert prepared.stats["repaired"].get("nul_bytes", 0) == 0


def test_utf16_without_bom_is_detected(tmp_path, tok_path):
    docs = make_docs(30, seed=3)
    f = tmp_path / "nobom.txt"
    f.write_bytes(("\n".join(docs) + "\n").encode("utf-16-le"))
    prepared, messages = run(make_cfg(tmp_path, [f], tok_path))
    check_stream(prepared, docs)
    assert prepared.stats["repaired"]["utf16_without_bom"] == 1
    assert any(str(f) in m and "UTF-16" in m for m in messages)


def test_undecodable_bytes_are_replaced_and_counted(tmp_path, tok_path):
    docs = make_docs(10, seed=4)
    raw = [d.encode() for d in docs]
    raw[2] = b"good words \xff\x80 more words"
    f = tmp_path / "bad.txt"
    f.write_bytes(b"\n".join(raw) + b"\n")
    prepared, messages = run(make_cfg(tmp_path, [f], tok_path))
    expected = [r.decode("utf-8", "replace") for r in raw]
    check_stream(prepared, expected)
    assert prepared.stats["repaired"]["undecodable_bytes"] == 2
    assert any(f"{f}:3" in m and "U+FFFD" in m for m in messages)


def test_nul_bytes_are_stripped_and_counted(tmp_path, tok_path):
    docs = make_docs(10, seed=5)
    raw = [d.encode() for d in docs]
    raw[4] = b"the\x00 world\x00\x00 of time"
    f = tmp_path / "nul.txt"
    f.write_bytes(b"\n".join(raw) + b"\n")
    prepared, messages = run(make_cfg(tmp_path, [f], tok_path))
    check_stream(prepared, [r.replace(b"\x00", b"").decode() for r in raw])
    assert prepared.stats["repaired"]["nul_bytes"] == 3
    assert any(f"{f}:5" in m and "NUL" in m for m in messages)


def test_binary_file_is_skipped(tmp_path, tok_path):
    good = write_lines(tmp_path / "good.txt", make_docs(20, seed=6))
    binary = tmp_path / "blob.txt"
    binary.write_bytes(bytes(range(256)) * 8 + b"\x00" * 4096)
    prepared, messages = run(make_cfg(tmp_path, [good, binary], tok_path))
    check_stream(prepared, make_docs(20, seed=6))
    assert prepared.stats["skipped"]["binary_file"] == 1
    assert any(str(binary) in m for m in messages)


def test_literal_special_token_strings_stay_text(tmp_path, tok_path):
    docs = ["the [MASK] and [CLS] of the [SEP] world [PAD]"] * 3 + make_docs(20, seed=7)
    f = write_lines(tmp_path / "special.txt", docs)
    prepared, _ = run(make_cfg(tmp_path, [f], tok_path))
    check_stream(prepared, docs)
    body = prepared.train[np.arange(len(prepared.train))][:, 1:]
    assert not np.isin(body, [0, 2, 4]).any()  # no [PAD], [CLS] or [MASK] from the text
    assert (body == SEP_ID).sum() <= prepared.stats["documents"]


# ------------------------------------------------------------------------------- long lines


def test_gigantic_line_is_read_in_bounded_pieces(tmp_path, tok_path, monkeypatch):
    import mlm.data as data

    rng = random.Random(8)
    giant = " ".join(rng.choice(WORDS) for _ in range(8000))  # ~40k chars, one line
    docs = make_docs(5, seed=8) + [giant] + make_docs(5, seed=9)
    f = write_lines(tmp_path / "giant.txt", docs)
    seen = {"longest": 0, "pieces": 0}
    original = data._Lines.iter_lines

    def spy(self, limit):
        for lineno, text, complete in original(self, limit):
            seen["longest"] = max(seen["longest"], len(text))
            seen["pieces"] += not complete
            yield lineno, text, complete

    monkeypatch.setattr(data._Lines, "iter_lines", spy)
    monkeypatch.setattr(data, "_READ_CHARS", 4096)  # reads of 4096 characters: never the whole line
    prepared, messages = run(make_cfg(tmp_path, [f], tok_path, max_chunk_chars=1000))
    assert 0 < seen["longest"] <= 1000 and seen["pieces"] >= 30
    check_stream(prepared, docs)  # pieces are cut at whitespace: same tokens as the whole line
    assert prepared.stats["repaired"]["long_document"] == 1
    assert any(f"{f}:6" in m for m in messages)


def test_gigantic_line_without_spaces(tmp_path, tok_path):
    blob = "ab" * 20000 + "\n"
    f = tmp_path / "blob.txt"
    f.write_text("first line here\n" + blob + "last line here\n")
    prepared, _ = run(make_cfg(tmp_path, [f], tok_path, max_chunk_chars=1000))
    assert prepared.stats["documents"] == 3
    assert prepared.stats["repaired"]["long_document"] == 1


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


# ------------------------------------------------------------------------------- files and paths


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


def test_missing_path_and_unmatched_glob_are_errors(tmp_path, tok_path):
    with pytest.raises(UserError, match="nope.txt: no such file or directory"):
        run(make_cfg(tmp_path, [tmp_path / "nope.txt"], tok_path))
    with pytest.raises(UserError, match=r"'.*\*.jsonl' matches no files"):
        run(make_cfg(tmp_path, [tmp_path / "*.jsonl"], tok_path))
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(UserError, match="emptydir has no"):
        run(make_cfg(tmp_path, [tmp_path / "emptydir"], tok_path))


def test_directory_is_recursed_in_sorted_order(tmp_path, tok_path):
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / ".git").mkdir()
    a, b, c, d = (make_docs(8, seed=s) for s in (12, 13, 14, 15))
    write_lines(root / "b.txt", b)
    write_lines(root / "a.txt", a)
    (root / "sub" / "c.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps({"text": t}) + "\n" for t in c).encode()))
    write_lines(root / "sub" / "d.TXT", d)
    write_lines(root / ".hidden.txt", ["never read"])
    write_lines(root / ".git" / "x.txt", ["never read"])
    (root / "notes.md").write_text("# not data\n")
    prepared, messages = run(make_cfg(tmp_path, [root], tok_path))
    check_stream(prepared, a + b + c + d)
    assert prepared.stats["sources"] == 4
    assert prepared.stats["skipped"]["unknown_extension"] == 1
    assert any("notes.md" in m for m in messages)


def test_glob_and_duplicates(tmp_path, tok_path):
    a, b = make_docs(8, seed=16), make_docs(8, seed=17)
    fa = write_lines(tmp_path / "part-1.txt", a)
    write_lines(tmp_path / "part-2.txt", b)
    prepared, _ = run(make_cfg(tmp_path, [tmp_path / "part-*.txt", fa], tok_path))
    check_stream(prepared, a + b)
    assert prepared.stats["sources"] == 2


@pytest.mark.parametrize("kind", ["gzip", "bz2", "xz"])
def test_compression_is_detected_by_content(tmp_path, tok_path, kind):
    docs = make_docs(40, seed=18)
    data = ("\n".join(docs) + "\n").encode()
    packed = {"gzip": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}[kind](data)
    f = tmp_path / "misnamed.txt"  # no compression suffix: detected by magic bytes
    f.write_bytes(packed)
    prepared, _ = run(make_cfg(tmp_path, [f], tok_path))
    check_stream(prepared, docs)


def test_truncated_gzip_is_a_clear_error(tmp_path, tok_path):
    data = gzip.compress(("\n".join(make_docs(400, seed=19)) + "\n").encode())
    f = tmp_path / "cut.txt.gz"
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="cut.txt.gz: cannot read it"):
        run(make_cfg(tmp_path, [f], tok_path))


def test_zstd_without_zstandard_names_the_file_and_the_fix(tmp_path, tok_path, monkeypatch):
    f = tmp_path / "data.jsonl.zst"
    f.write_bytes(b"\x28\xb5\x2f\xfd" + b"\x00" * 32)
    monkeypatch.setitem(sys.modules, "zstandard", None)  # import fails as if not installed
    with pytest.raises(UserError, match=r"data.jsonl.zst: .*zstd.*pip install zstandard"):
        run(make_cfg(tmp_path, [f], tok_path))


def test_zstd_roundtrip(tmp_path, tok_path):
    zstandard = pytest.importorskip("zstandard")
    docs = make_docs(40, seed=20)
    f = tmp_path / "data.jsonl"  # no .zst suffix: detected by content
    f.write_bytes(zstandard.ZstdCompressor().compress("".join(json.dumps({"text": t}) + "\n" for t in docs).encode()))
    prepared, _ = run(make_cfg(tmp_path, [f], tok_path))
    check_stream(prepared, docs)


# ------------------------------------------------------------------------------- JSON, parquet, datasets


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


def test_new_config_fields_are_validated():
    with pytest.raises(ConfigError, match="data.max_chunk_chars"):
        load_config(None, ["data.max_chunk_chars=10"])
    with pytest.raises(ConfigError, match="data.max_record_chars"):
        load_config(None, ["data.max_record_chars=0"])
    with pytest.raises(ConfigError, match="data.min_chars"):
        load_config(None, ["data.min_chars=5000", "data.max_chunk_chars=1000"])
    assert load_config(None, ["data.max_chunk_chars=5000"]).data.max_chunk_chars == 5000


# ------------------------------------------------------------------------------- the loader side


def test_block_dataset_indexing(tmp_path, tok_path):
    docs = make_docs(200, seed=26)
    f = write_lines(tmp_path / "a.txt", docs)
    prepared, _ = run(make_cfg(tmp_path, [f], tok_path, shard_blocks=5))
    ds = prepared.train
    n = len(ds)
    assert len(ds.shards) == -(-n // 5) and n > 20
    everything = np.stack([ds[i] for i in range(n)])
    assert everything.shape == (n, 16) and everything.dtype == np.uint16
    assert (ds[-1] == everything[-1]).all()
    idx = np.array([n - 1, 0, 7, 7, 3, 12])
    assert (ds[idx] == everything[idx]).all()
    assert (ds[[1, 2]] == everything[[1, 2]]).all()
    assert (ds[3:9] == everything[3:9]).all()
    assert ds[np.array([], dtype=np.int64)].shape == (0, 16)
    assert ds[np.arange(6).reshape(2, 3)].shape == (2, 3, 16)
    with pytest.raises(IndexError):
        ds[n]
    with pytest.raises(IndexError):
        ds[np.array([0, n])]
    clone = pickle.loads(pickle.dumps(ds))
    assert (clone[idx] == everything[idx]).all()
    again = BlockDataset.from_index(prepared.directory, "train")
    assert len(again) == n and (again[idx] == everything[idx]).all()


def test_empty_validation_when_fraction_is_zero(tmp_path, tok_path):
    f = write_lines(tmp_path / "a.txt", make_docs(30, seed=27))
    prepared, _ = run(make_cfg(tmp_path, [f], tok_path))
    assert len(prepared.validation) == 0
    assert prepared.validation[np.array([], dtype=np.int64)].shape == (0, 16)


def test_epoch_permutation():
    p = epoch_permutation(1000, seed=3, epoch=0)
    assert sorted(p.tolist()) == list(range(1000))
    assert (p == epoch_permutation(1000, 3, 0)).all()
    assert not (p == epoch_permutation(1000, 3, 1)).all()
    assert not (p == epoch_permutation(1000, 4, 0)).all()
    assert epoch_permutation(0, 0, 0).shape == (0,)
    assert epoch_permutation(1, 0, 5).tolist() == [0]
    # pinned values: the same permutation on every machine and numpy version
    assert epoch_permutation(10, seed=0, epoch=0).tolist() == PINNED_0_0
    assert epoch_permutation(10, seed=1234, epoch=7).tolist() == PINNED_1234_7
    with pytest.raises(ValueError):
        epoch_permutation(-1, 0, 0)


PINNED_0_0 = [6, 8, 0, 9, 3, 1, 4, 2, 7, 5]
PINNED_1234_7 = [5, 3, 0, 9, 6, 7, 2, 8, 1, 4]


def test_epoch_permutation_matches_a_pure_python_reference():
    mask = (1 << 64) - 1

    def mix(z):
        z &= mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    for seed, epoch in ((0, 0), (-5, 3), (2 ** 40, 11)):
        base = mix(mix(seed) + 0x9E3779B97F4A7C15 * (epoch + 1))
        keys = [mix(i * 0x9E3779B97F4A7C15 + base) for i in range(300)]
        reference = sorted(range(300), key=lambda i: (keys[i], i))
        assert epoch_permutation(300, seed, epoch).tolist() == reference
