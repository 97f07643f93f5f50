"""Shared fixtures: a small real-English corpus and a shared data cache (plain helpers: helpers.py)."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> Path:
    """~300 KB of English from the stdlib's pydoc topics, one document per paragraph."""
    import pydoc_data.topics as topics

    texts = [topics.topics[k] for k in sorted(topics.topics)]
    path = tmp_path_factory.mktemp("corpus") / "topics.txt"
    body = "\n\n".join(t.strip() for t in texts)[:300_000]
    path.write_text(body, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> Path:
    """One tokenized cache shared by the tiny runs (same corpus, tokenizer and length)."""
    return tmp_path_factory.mktemp("data_cache")
