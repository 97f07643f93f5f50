"""Plain helpers shared by the tests (fixtures live in conftest.py)."""
from __future__ import annotations

import functools
import importlib.util
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import pydoc_data.topics as topics
import torch

from mlm import checkpoint as ck
from mlm.config import load_config
from mlm.model import MLMModel, ModelConfig
from mlm.schema import to_yaml
from mlm.tokenizer import PAD, special_token_ids, train_tokenizer

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"


def load_script(path: Path):
    """Import a script (scripts/*.py are not a package) as a module, to call its functions in-process."""
    spec = importlib.util.spec_from_file_location(f"script_{path.parent.name}_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def topic_texts(n: int = 120) -> list[str]:
    return [topics.topics[k] for k in sorted(topics.topics)][:n]


@functools.lru_cache(maxsize=1)
def tiny_tokenizer():
    """A 600-token tokenizer trained on the first pydoc topics (trained once per test session)."""
    return train_tokenizer(topic_texts(), 600)


def tiny_checkpoint(root: Path, *, seed: int = 0, noise: float = 0.0, seq_len: int = 32,
                    run_overrides: Sequence[str] = (), **model_options) -> Path:
    """Save a tiny random MLMModel + tokenizer as `root/checkpoints/step_1`; `noise` perturbs every
    weight (norms and biases included) so that a wrong weight mapping cannot go unnoticed;
    `run_overrides` (["collate.mlm_probability=0.4", ...], as on the command line) go into the saved
    run config."""
    tok = tiny_tokenizer()
    options = dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_seq_len=64)
    options.update(model_options)
    cfg = ModelConfig(vocab_size=tok.get_vocab_size(), pad_token_id=tok.token_to_id(PAD),
                      special_token_ids=special_token_ids(tok), **options)
    torch.manual_seed(seed)
    model = MLMModel(cfg)
    if noise:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * noise)
    run = load_config(None, [f"output_dir={root}", f"data.seq_len={seq_len}", *run_overrides])
    run.model = cfg
    contents = ck.CheckpointContents(model.state_dict(), asdict(cfg), tok.to_str(), to_yaml(run))
    return ck.save_checkpoint(root / "checkpoints", 1, contents)
