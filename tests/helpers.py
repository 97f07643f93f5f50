"""Plain helpers shared by the tests (fixtures live in conftest.py)."""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"


def tiny_overrides(corpus: Path, cache: Path, out: Path, **extra: object) -> list[str]:
    """A tiny, fast, deterministic pretraining run as `key=value` overrides."""
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
