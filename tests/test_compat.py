"""Checkpoints written before the reorganisation (commit ec0587c) still load, export and resume.

`tests/fixtures/checkpoint_v0` was written by that code: a 20-step tiny run (fixed tokenizer,
deterministic, fp32, one thread) with a checkpoint at step 10, its per-step losses, and a
fill-mask answer of the step-10 model.
"""
from __future__ import annotations

import json
import shutil

import pytest

from helpers import FIXTURES
from mlm import checkpoint as ck
from mlm.config import load_config
from mlm.export_hf import export_hf
from mlm.scoring import fill_mask
from mlm.train import train

V0 = FIXTURES / "checkpoint_v0"
STEP_10 = V0 / "run" / "checkpoints" / "step_10"


def v0_overrides(out, corpus, tokenizer, cache) -> list[str]:
    """The command line that wrote the fixture, with this test's paths."""
    values = {"output_dir": out, "data.train_files": f"[{corpus}]", "data.txt_documents": "paragraph",
              "data.tokenizer": tokenizer, "data.cache_dir": cache, "data.seq_len": 32,
              "data.validation_fraction": 0.1, "model.hidden_size": 32, "model.num_layers": 2, "model.num_heads": 2,
              "model.intermediate_size": 64, "model.max_seq_len": 32, "train.max_steps": 20, "train.batch_size": 8,
              "train.lr": 3e-3, "train.warmup_steps": 2, "train.schedule": "constant", "train.log_every": 1,
              "train.precision": "fp32", "train.num_threads": 1, "train.deterministic": True, "eval.every": 10,
              "eval.batches": 2, "eval.batch_size": 8, "checkpoint.every": 10, "checkpoint.keep": 0,
              "log.progress": False}
    return [f"{k}={v}" for k, v in values.items()]


def test_an_old_checkpoint_loads_and_fills_masks_as_it_did():
    model, tokenizer = ck.load_pretrained(STEP_10)
    expected = json.loads((V0 / "fill_mask_reference.json").read_text())
    got = fill_mask(model, tokenizer, expected["text"], top_k=3)
    assert [p.token for p in got[0]] == [p["token"] for p in expected["masks"][0]]
    for p, q in zip(got[0], expected["masks"][0]):
        assert p.probability == pytest.approx(q["probability"], rel=1e-4)


def test_an_old_checkpoint_exports_to_transformers(tmp_path):
    pytest.importorskip("transformers")
    result = export_hf(STEP_10, tmp_path / "hf")
    assert result["max_abs_diff"] <= 1e-4


def test_an_old_checkpoint_resumes_on_the_old_loss_curve(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(V0 / "run", run)
    cfg = load_config(None, v0_overrides(run, V0 / "corpus.txt", V0 / "tokenizer.json", tmp_path / "cache"))
    final = train(cfg)
    assert final["step"] == 20
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    resumed = {e["step"]: e["train_loss"] for e in events if e.get("train_loss") is not None}
    reference = {e["step"]: e["train_loss"] for line in (V0 / "reference_metrics.jsonl").read_text().splitlines()
                 for e in [json.loads(line)] if e.get("train_loss") is not None}
    assert sorted(resumed) == list(range(11, 21))
    for step, loss in resumed.items():  # same machine: bit-equal; another CPU's kernels: summation order only
        assert loss == pytest.approx(reference[step], rel=1e-5), step
