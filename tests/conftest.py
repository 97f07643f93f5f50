"""Shared fixtures: a small real-English corpus and a tiny, fast run config."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


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


def tiny_overrides(corpus: Path, cache: Path, out: Path, **extra: object) -> list[str]:
    values = {
        "output_dir": str(out),
        "data.train_files": f"[{corpus}]",
        "data.txt_documents": "paragraph",
        "data.cache_dir": str(cache),
        "data.vocab_size": 1000,
        "data.seq_len": 32,
        "data.validation_fraction": 0.05,
        "model.hidden_size": 32,
        "model.num_layers": 2,
        "model.num_heads": 2,
        "model.intermediate_size": 64,
        "model.max_seq_len": 32,
        "train.max_steps": 20,
        "train.batch_size": 16,
        "train.lr": 3e-3,
        "train.warmup_steps": 2,
        "train.schedule": "constant",  # lr independent of max_steps: runs of different lengths agree
        "train.log_every": 1,
        "train.precision": "fp32",
        "train.num_threads": 1,
        "train.deterministic": True,
        "eval.every": 10,
        "eval.batches": 4,
        "eval.batch_size": 16,
        "checkpoint.every": 5,
        "checkpoint.keep": 0,
        "log.progress": False,
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]
