"""mlm.data.decoding: compression by content, text encodings, undecodable bytes and NULs counted
per stream with their line numbers, lines read in bounded pieces."""
from __future__ import annotations

import bz2
import codecs
import gzip
import io
import json
import lzma
import random
import sys

import pytest

from mlm.data import decoding
from mlm.data.decoding import (LineReader, RepairingDecoder, TextStream, compression_of, guess_encoding,
                               repair_undecodable)
from mlm.data.report import DirtyInputReport
from mlm.errors import UserError
from tests.data.data_helpers import check_stream, make_cfg, make_docs, run, write_lines

# ------------------------------------------------------------------------------- the decoder, unit by unit

ENCODINGS = ("utf-8", "utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be")


def decode_in_pieces(data: bytes, codec: str, rng: random.Random) -> tuple[str, int]:
    decoder = RepairingDecoder(codec)
    out, i = [], 0
    while i < len(data):
        k = rng.randint(1, 9)
        out.append(decoder.decode(data[i:i + k]))
        i += k
    out.append(decoder.decode(b"", final=True))
    return "".join(out), decoder.replaced


def damaged(text: str, encoding: str, rng: random.Random) -> bytes:
    data = bytearray(text.encode(encoding))
    for _ in range(rng.randint(0, 6)):
        if data:
            i, op = rng.randrange(len(data)), rng.random()
            if op < 0.4:
                data[i] = rng.randrange(256)
            elif op < 0.7:
                del data[i]
            else:
                data.insert(i, rng.randrange(256))
    return bytes(data)


@pytest.mark.parametrize("codec", ENCODINGS)
def test_repairing_decoder_replaces_exactly_what_errors_replace_would(codec):
    rng = random.Random(codec)
    for _ in range(400):
        text = "".join(rng.choice(["a", "\u00e9", "\u4e2d", "\U0001f600", "\n", " ", "\ufffd"])
                       for _ in range(rng.randint(0, 60)))
        data = damaged(text, codec, rng)
        decoded, replaced = decode_in_pieces(data, codec, rng)
        repaired, marks = repair_undecodable(decoded)
        assert repaired == data.decode(codec, "replace")
        assert marks == replaced  # one mark per undecodable sequence
        if data == text.encode(codec):
            assert replaced == 0  # a genuine U+FFFD in the text is not counted


def test_repairing_decoder_counts_per_stream():
    a, b = RepairingDecoder("utf-8"), RepairingDecoder("utf-8")
    a.decode(b"ok \xff\xfe ok")
    b.decode(b"fine")
    a.decode(b"\x80", final=True)
    assert (a.replaced, b.replaced) == (3, 0)


@pytest.mark.parametrize("encoding, bom, codec", [
    ("utf-16", codecs.BOM_UTF16_LE, "utf-16-le"), ("utf-16", codecs.BOM_UTF16_BE, "utf-16-be"),
    ("utf-32", codecs.BOM_UTF32_LE, "utf-32-le"), ("utf-32", codecs.BOM_UTF32_BE, "utf-32-be"),
    ("utf-8-sig", codecs.BOM_UTF8, "utf-8")])
def test_text_stream_drops_the_byte_order_mark_and_marks_undecodable_bytes(encoding, bom, codec):
    data = bom + "caf\u00e9\r\nna\u00efve\rend\n".encode(codec) + b"\xff"  # a stray last byte: undecodable
    stream = TextStream(io.BytesIO(data), encoding, data[:64])
    assert stream.read_all() == "caf\u00e9\nna\u00efve\nend\n" + decoding.UNDECODABLE
    assert stream.replaced == 1


def test_guess_encoding():
    assert guess_encoding(codecs.BOM_UTF8 + b"abc") == ("utf-8-sig", None, "")
    assert guess_encoding(codecs.BOM_UTF16_BE + "abc".encode("utf-16-be")) == ("utf-16", "utf16_or_32", "")
    assert guess_encoding(codecs.BOM_UTF32_LE + "abc".encode("utf-32-le")).encoding == "utf-32"
    assert guess_encoding("plain text here!".encode("utf-16-le")) == ("utf-16-le", "utf16_without_bom",
                                                                       "little-endian")
    assert guess_encoding("plain text here!".encode("utf-16-be")).encoding == "utf-16-be"
    assert guess_encoding(b"\x00" * 64 + bytes(range(1, 64))) == (None, "binary_file", "")
    assert guess_encoding(b"just utf-8 \xc3\xa9").encoding == "utf-8"


def test_compression_of_reads_magic_bytes():
    assert compression_of(gzip.compress(b"x")[:8]) == "gzip"
    assert compression_of(bz2.compress(b"x")[:8]) == "bz2"
    assert compression_of(lzma.compress(b"x")[:8]) == "xz"
    assert compression_of(b"\x28\xb5\x2f\xfd\x00\x00") == "zstd"
    assert compression_of(b"BZh0") is None and compression_of(b"plain") is None


def test_line_reader_cuts_long_lines_and_repairs_with_line_numbers(monkeypatch):
    monkeypatch.setattr(decoding, "READ_BYTES", 64)
    data = b"short\n" + b"x" * 250 + b"\nbad \xff\x00 line\n" + b"no newline"
    report = DirtyInputReport(None)
    reader = LineReader(TextStream(io.BytesIO(data), "utf-8", data[:64]), "f.txt", report)
    lines = list(reader.lines(100))
    assert lines[0] == (1, "short", True)
    assert [(n, len(t), c) for n, t, c in lines[1:4]] == [(2, 100, False), (2, 100, False), (2, 50, True)]
    assert lines[4:] == [(3, "bad \ufffd line", True), (4, "no newline", True)]
    assert report.repaired == {"nul_bytes": 1, "undecodable_bytes": 1}


# ------------------------------------------------------------------------------- text encodings, end to end


def test_crlf_gives_the_same_shards_as_lf(tmp_path, tok_path):
    import numpy as np

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


def test_undecodable_utf16_is_replaced_and_counted_with_its_line(tmp_path, tok_path):
    newline = "\n".encode("utf-16-le")
    lines = [d.encode("utf-16-le") for d in make_docs(10, seed=4)]
    lines[3] = "good words ".encode("utf-16-le") + b"\x00\xd8" + "more words".encode("utf-16-le")  # lone surrogate
    data = codecs.BOM_UTF16_LE + newline.join(lines) + newline + b"!"  # and a stray last byte
    f = tmp_path / "bad16.txt"
    f.write_bytes(data)
    prepared, messages = run(make_cfg(tmp_path, [f], tok_path))
    expected = data.decode("utf-16", "replace").split("\n")
    assert expected[3] == "good words \ufffdmore words" and expected[-1] == "\ufffd"
    check_stream(prepared, expected)
    assert prepared.stats["repaired"]["undecodable_bytes"] == 2
    assert any(f"{f}:4" in m and "U+FFFD" in m for m in messages)
    assert any(f"{f}:11" in m and "U+FFFD" in m for m in messages)


def test_genuine_replacement_characters_are_not_counted(tmp_path, tok_path):
    f = write_lines(tmp_path / "fffd.txt", ["text with \ufffd in it"] + make_docs(20, seed=4))
    raw = f.read_bytes()
    f.write_bytes(raw.replace(b"in it", b"in \xff it"))
    prepared, _ = run(make_cfg(tmp_path, [f], tok_path))
    assert prepared.stats["repaired"]["undecodable_bytes"] == 1


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


# ------------------------------------------------------------------------------- compression, end to end


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
