"""The task benchmark: every (task, checkpoint, seed) cell is fine-tuned once, tabulated as mean ± sd
with an average column and linear-probe rows; a re-run recomputes nothing, a killed run recomputes
only the unfinished cell, a changed task setting only that task's cells; mistakes name the key."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml

from mlm.errors import run_cli
from mlm.benchmark import BenchmarkConfig, main, run_benchmark
from mlm.finetune import grid
from mlm.schema import ConfigError, load_config
from helpers import tiny_checkpoint

WORDS = ["the", "list", "code", "module", "value", "file", "returns", "a"]


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def examples(kind: str, n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = [rng.choice(WORDS) for _ in range(5)]
        if kind == "topics":
            words.insert(2, "fast" if i % 2 else "slow")
            out.append({"text": " ".join(words), "label": "good" if i % 2 else "bad"})
        elif kind == "tags":
            words.insert(1, "guido")
            out.append({"tokens": words, "tags": ["O", "B-PER"] + ["O"] * (len(words) - 2)})
        else:
            out.append({"text": " ".join(words), "text_pair": " ".join(words[:i % 4]), "label": float(i % 4)})
    return out


@pytest.fixture()
def bench_yaml(tmp_path) -> Path:
    files = {kind: {split: write_jsonl(tmp_path / f"{kind}_{split}.jsonl", examples(kind, n, seed))
                    for split, n, seed in (("train", 48, 1), ("dev", 16, 2), ("test", 16, 3))}
             for kind in ("topics", "tags", "pairs")}
    spec = {
        "output_dir": str(tmp_path / "bench"), "seeds": [0, 1],
        "checkpoints": {"tiny": str(tiny_checkpoint(tmp_path / "base").parent.parent), "scratch": "scratch"},
        "finetune": {"train.epochs": 1, "train.batch_size": 16, "train.precision": "fp32", "train.device": "cpu",
                     "train.num_threads": 1, "train.lr": 1e-3},
        "tasks": {
            "topics": {"task": "sequence_classification", **{f"{s}_file": files["topics"][s] for s in ("train", "test")},
                       "validation_file": files["topics"]["dev"]},
            "tags": {"task": "token_classification", "train_file": files["tags"]["train"],
                     "validation_file": files["tags"]["dev"], "test_file": files["tags"]["test"], "train.epochs": 2},
            "relatedness": {"task": "regression", "train_file": files["pairs"]["train"],
                            "validation_file": files["pairs"]["dev"], "test_file": files["pairs"]["test"],
                            "text_pair_field": "text_pair"}},
    }
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture()
def calls(monkeypatch) -> list[str]:
    """The output folder of every fine-tuning the benchmark starts (the real run, counted)."""
    seen: list[str] = []
    real = grid.finetune

    def counted(cfg):
        seen.append(str(Path(cfg.output_dir).relative_to(Path(cfg.output_dir).parents[2])))
        return real(cfg)

    monkeypatch.setattr(grid, "finetune", counted)
    return seen


def test_benchmark_tabulates_then_resumes_without_recomputing(bench_yaml, calls, capsys):
    out = bench_yaml.parent / "bench"
    with pytest.raises(SystemExit) as exit_:
        run_cli(main, ["--config", str(bench_yaml)])
    assert exit_.value.code == 0
    assert len(calls) == 12  # 3 tasks × 2 checkpoints × 2 seeds (+ 4 probe cells, not fine-tuning)
    err = capsys.readouterr().err
    assert "[1/16] topics × tiny × seed 0 (fine-tuning): running (15 after this)" in err
    assert "[16/16] relatedness × scratch × seed 1 (fine-tuning): running (0 after this" in err
    summary = json.loads((out / "results.json").read_text())
    assert summary["metrics"] == {"topics": "test_accuracy", "tags": "test_entity_f1", "relatedness": "test_pearson"}
    table = summary["table"]
    assert list(table) == ["tiny", "scratch", "tiny (linear probe)", "scratch (linear probe)"]
    assert table["tiny"]["topics"]["n"] == 2 and "average" in table["scratch"]
    assert set(table["tiny (linear probe)"]) == {"topics"}  # probes exist for sequence classification only
    cell = json.loads((out / "cells" / "tags" / "tiny" / "seed_1" / "results.json").read_text())
    assert table["tiny"]["tags"]["values"][1] == cell["test_entity_f1"]
    per_seed = [sum(table["tiny"][t]["values"][s] for t in ("topics", "tags", "relatedness")) / 3 for s in (0, 1)]
    assert table["tiny"]["average"]["values"] == pytest.approx(per_seed)
    md = (out / "results.md").read_text()
    assert "| checkpoint | topics (test_accuracy) | tags (test_entity_f1) | relatedness (test_pearson) | average |" in md
    assert "| tiny (linear probe) | " in md and " ± " in md and "| — | — | — |" in md

    # Run again: every cell is cached, nothing is recomputed or rewritten.
    stamps = {p: p.stat().st_mtime_ns for p in (out / "cells").rglob("results.json")}
    calls.clear()
    summary2 = run_benchmark(load_config(bench_yaml, [], BenchmarkConfig))
    assert calls == [] and summary2["cells_run"] == 0 and summary2["cells_cached"] == 16
    assert {p: p.stat().st_mtime_ns for p in (out / "cells").rglob("results.json")} == stamps
    assert summary2["table"] == table

    # A run killed inside a cell left no results.json there: only that cell runs again.
    (out / "cells" / "tags" / "scratch" / "seed_1" / "results.json").unlink()
    run_benchmark(load_config(bench_yaml, [], BenchmarkConfig))
    assert calls == ["tags/scratch/seed_1"]

    # A changed task setting reruns that task's cells only.
    calls.clear()
    run_benchmark(load_config(bench_yaml, ["tasks.relatedness.train.lr=2e-3"], BenchmarkConfig))
    assert sorted(calls) == [f"relatedness/{c}/seed_{s}" for c in ("scratch", "tiny") for s in (0, 1)]


def test_benchmark_mistakes_name_the_key(bench_yaml, tmp_path):
    def run(*overrides: str) -> None:
        run_benchmark(load_config(bench_yaml, list(overrides), BenchmarkConfig))

    with pytest.raises(ConfigError, match="tasks.tags: unknown config key train.epochz; did you mean train.epochs"):
        run("tasks.tags.train.epochz=3")
    with pytest.raises(ConfigError, match=r"tasks.topics.test_file: .*nope.jsonl: file not found"):
        run(f"tasks.topics.test_file={tmp_path / 'nope.jsonl'}")
    with pytest.raises(ConfigError, match="tasks.tags: task must be one of"):
        run("tasks.tags.task=ner")
    with pytest.raises(ConfigError, match="scratch needs a real checkpoint"):
        run("checkpoints={a: scratch}")
    with pytest.raises(Exception, match="checkpoints.tiny: nowhere: checkpoint not found"):
        run("checkpoints.tiny=nowhere")
    with pytest.raises(ConfigError, match="tasks.tags.metric: 'test_accuracy' is not a metric of token_classification"):
        run("tasks.tags.metric=test_accuracy")
    with pytest.raises(ConfigError, match="unknown config key seed; did you mean seeds"):
        run("seed=[1]")
    shipped = load_config(Path(__file__).parent.parent / "configs" / "bench.yaml", [], BenchmarkConfig)
    assert list(shipped.tasks) == ["topics", "params", "errors", "relatedness"] and shipped.seeds == [0, 1, 2]
