"""mlm.data.sources: train_files entries (files, globs, directories) become sources in a fixed
order, duplicates once; a mistake in an entry is a clear error naming it."""
from __future__ import annotations

import gzip
import json
import os

import pytest

from mlm.config import Config
from mlm.data import sources as data_sources
from mlm.data.report import DirtyInputReport
from mlm.data.sources import resolve_sources
from mlm.errors import UserError
from tests.data.data_helpers import check_stream, make_cfg, make_docs, run, write_lines


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


def test_sources_are_fingerprinted_by_path_size_and_mtime_and_the_cache_folder_is_not_read(tmp_path):
    root = tmp_path / "corpus"
    (root / "cache" / "corpus").mkdir(parents=True)
    f = write_lines(root / "a.txt", ["one document"])
    write_lines(root / "cache" / "corpus" / "built.jsonl", ['{"text": "the cache is no input"}'])
    d = Config().data
    d.train_files = [str(root), str(f)]
    d.text_field = "body"
    sources = resolve_sources(d, root / "cache", DirtyInputReport(None), print)
    st = os.stat(f)
    assert [s.fingerprint() for s in sources] == [
        {"path": str(f), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "field": "body"}]


def test_no_input_means_the_default_corpus(tmp_path, monkeypatch):
    built = tmp_path / "stdlib.jsonl"
    built.write_text('{"text": "docs"}\n')
    monkeypatch.setattr(data_sources, "ensure_stdlib_corpus", lambda cache, log: built)
    sources = resolve_sources(Config().data, tmp_path, DirtyInputReport(None), print)
    assert [(s.kind, s.name, s.text_field) for s in sources] == [("file", str(built), "text")]
