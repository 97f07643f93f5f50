"""scripts/pretraining_curve.py at toy size: every point is pretrained, fine-tuned from its weights and
from scratch on every task and seed, compared with the no-network baseline of each task type, and a
second run reuses every finished run instead of recomputing it."""
from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import pytest
import yaml

from helpers import REPO, load_script, tiny_overrides
from mlm.config import load_config

STDLIB = Path(sysconfig.get_paths()["stdlib"])


def load(name: str):
    return load_script(REPO / "scripts" / f"{name}.py")


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory, corpus_file) -> Path:
    root = tmp_path_factory.mktemp("curve")
    base = dict(o.split("=", 1) for o in tiny_overrides(corpus_file, root / "cache", root / "unused",
                                                         **{"train.max_steps": 4, "eval.every": 0,
                                                            "checkpoint.every": 0}))
    config: dict = {}
    for key, value in base.items():  # the overrides as a nested YAML config
        *path, leaf = key.split(".")
        node = config
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    (root / "base.yaml").write_text(yaml.safe_dump(config))
    assert load("make_classification_task").main(["--out", str(root / "topics"), "--train-per-label", "6",
                                                  "--dev-per-label", "4", "--test-per-label", "4"]) == 0
    assert load("make_token_task").main(["--out", str(root / "params"), "--root", str(STDLIB / "email"),
                                         "--train-size", "24", "--dev-size", "8", "--test-size", "8"]) == 0
    spec = {"out": str(root / "out"), "base_config": str(root / "base.yaml"),
            "finetune_config": str(REPO / "configs" / "finetune.yaml"),
            "tasks": {"topics": str(root / "topics"),
                      "params": {"folder": str(root / "params"), "task": "token_classification"}},
            "seeds": [0], "finetune": ["train.epochs=1", "train.num_threads=1", "train.batch_size=8"],
            "points": {"p1": {"minutes": 1, "pretrain": ["train.max_steps=2"]},
                       "p2": {"minutes": 2, "pretrain": []}}}
    path = root / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_curve_compares_pretrained_scratch_and_baselines_then_resumes(spec_file, capsys):
    curve = load("pretraining_curve")
    assert curve.main(["--spec", str(spec_file)]) == 0
    out = Path(yaml.safe_load(spec_file.read_text())["out"])
    result = json.loads((out / "curve.json").read_text())
    assert [result["points"][p]["steps"] for p in ("p1", "p2")] == [2, 4]
    for point in result["points"].values():
        for key in ("pretrained_topics", "scratch_topics", "pretrained_params", "scratch_params"):
            assert point[key]["n"] == 1 and 0.0 <= point[key]["mean"] <= 1.0, key
    # scratch depends only on architecture and tokenizer: both points share one set of runs
    assert result["points"]["p1"]["scratch_topics"] == result["points"]["p2"]["scratch_topics"]
    assert result["baselines"]["topics"]["name"] == "TF-IDF + LR"
    assert result["baselines"]["params"]["name"] == "per-token LR"
    assert result["baselines"]["params"]["score"] == result["baselines"]["params"]["test_entity_f1"]
    capsys.readouterr()
    assert curve.main(["--spec", str(spec_file)]) == 0  # everything cached: nothing pretrained or fine-tuned
    log = capsys.readouterr().err
    assert "pretraining" not in log and "fine-tuning" not in log and "baseline" not in log
    assert json.loads((out / "curve.json").read_text())["points"] == result["points"]


def test_the_shipped_curve_spec_gives_valid_pretraining_configs():
    spec = yaml.safe_load((REPO / "configs" / "curve.yaml").read_text())
    for name, point in spec["points"].items():
        cfg = load_config(str(REPO / spec["base_config"]), point["pretrain"])
        assert (cfg.train.budget_minutes == point["minutes"]) or name == "base", name
    assert (REPO / spec["finetune_config"]).is_file()
