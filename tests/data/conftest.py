"""Fixtures of the mlm.data tests (plain helpers: tests/data/data_helpers.py)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlm.tokenizer import train_tokenizer
from tests.data.data_helpers import make_docs, write_lines


@pytest.fixture(scope="session")
def tok_path(tmp_path_factory) -> Path:
    """A small wordpiece tokenizer (vocab 300) of the test vocabulary, saved as tokenizer.json."""
    tok = train_tokenizer(make_docs(400, seed=99) + ["[ ] ( ) , . ! ? \ufffd"], vocab_size=300)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return path


@pytest.fixture()
def corpus(tmp_path) -> tuple[Path, list[str]]:
    """Three files of mixed formats, ~600 documents, some long (several blocks)."""
    root = tmp_path / "corpus"
    root.mkdir()
    docs_a = make_docs(250, seed=1, hi=120)
    docs_b = make_docs(250, seed=2)
    docs_c = make_docs(100, seed=3, lo=100, hi=300)
    write_lines(root / "a.txt", docs_a)
    (root / "b.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs_b))
    write_lines(root / "c.txt", docs_c)
    return root, docs_a + docs_b + docs_c
