"""mlm.data.documents and mlm.data.cutting: the piece stream (long documents in pieces cut at
whitespace, blank and short documents skipped, the split hash) and its resume position."""
from __future__ import annotations

import random

from mlm.config import Config
from mlm.data import decoding
from mlm.data.cutting import cut_point, recut
from mlm.data.documents import PieceStream, split_hash
from mlm.data.readers import Source
from mlm.data.report import DirtyInputReport
from tests.data.data_helpers import WORDS, check_stream, make_cfg, make_docs, run, split_of, write_lines


def test_gigantic_line_is_read_in_bounded_pieces(tmp_path, tok_path, monkeypatch):
    rng = random.Random(8)
    giant = " ".join(rng.choice(WORDS) for _ in range(8000))  # ~40k chars, one line
    docs = make_docs(5, seed=8) + [giant] + make_docs(5, seed=9)
    f = write_lines(tmp_path / "giant.txt", docs)
    seen = {"longest": 0, "pieces": 0}
    original = decoding.LineReader.lines

    def spy(self, limit):
        for lineno, text, complete in original(self, limit):
            seen["longest"] = max(seen["longest"], len(text))
            seen["pieces"] += not complete
            yield lineno, text, complete

    monkeypatch.setattr(decoding.LineReader, "lines", spy)
    monkeypatch.setattr(decoding, "READ_BYTES", 4096)  # reads of 4096 bytes: never the whole line
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


def settings(**kw):
    d = Config().data
    for k, v in kw.items():
        setattr(d, k, v)
    return d


def pieces_of(path, start=(0, 0), **kw):
    source = Source("file", str(path), "text", path.stat().st_size)
    report = DirtyInputReport(None)
    return list(PieceStream([source], settings(**kw), report, need_hash=True).pieces(start)), report


def test_pieces_of_a_long_document_share_the_hash_of_the_first(tmp_path):
    rng = random.Random(3)
    long_doc = " ".join(rng.choice(WORDS) for _ in range(1000))
    f = write_lines(tmp_path / "a.txt", ["  short one  ", "", "x", long_doc, "\x00tail\x00"])
    pieces, report = pieces_of(f, max_chunk_chars=1000, min_chars=2)
    texts = [p[2] for p in pieces]
    assert texts[0] == "short one" and texts[-1] == "tail"
    assert " ".join(texts[1:-1]).split() == long_doc.split() and all(len(t) <= 1000 for t in texts)
    long_pieces = pieces[1:-1]
    assert {p[3] for p in long_pieces} == {split_hash(long_pieces[0][2])}
    assert [p[4] for p in long_pieces] == [False] * (len(long_pieces) - 1) + [True]
    assert [p[:2] for p in pieces] == [(0, k) for k in range(1, len(pieces) + 1)]
    assert report.skipped == {"blank": 1, "too_short": 1}
    assert report.repaired == {"long_document": 1, "nul_bytes": 2}


def test_resuming_at_a_position_continues_right_after_it_without_counting_again(tmp_path):
    docs = make_docs(30, seed=4)
    docs[3] = "bad\x00 one"
    f = write_lines(tmp_path / "a.txt", docs)
    everything, _ = pieces_of(f)
    rest, report = pieces_of(f, start=everything[9][:2])
    assert rest == everything[10:]
    assert report.repaired == {}  # the NUL in a document before the position was counted by the first run


def test_split_hash_is_the_documented_rule():
    for text in make_docs(50, seed=5) + ["caf\u00e9", "\ud800 lone"]:
        assert (split_hash(text) < 0.3) == (split_of(text, 0.3) == 1)


def test_cut_point_prefers_whitespace_past_the_middle():
    assert cut_point("aaaa bbbb cccc", 8) == 5
    assert cut_point("a bbbbbbbbbbbb", 8) == 8  # whitespace before the middle: hard cut
    chunks = ["word " * 50, "x" * 30, " tail " * 20]
    pieces = list(recut(iter(chunks), 64))
    assert "".join(pieces) == "".join(chunks) and max(map(len, pieces)) <= 64
