"""The task benchmark: fine-tune every (task, checkpoint, seed) cell and tabulate, like a GLUE row.

    python -m mlm.benchmark --config configs/bench.yaml [key=value ...]

It answers the question every user asks of a checkpoint — better than the last one, and than no
pretraining, on my tasks? — in one command: each cell is an ordinary fine-tuning run (`finetune`,
in-process) in its own folder `<output_dir>/cells/<task>/<checkpoint>/seed_<s>/`; a linear-probe
cell (`probe_seed_<s>`) is added per checkpoint for sequence classification. A cell whose
results.json exists and whose spec (the resolved fine-tuning config, the checkpoint it starts from,
the size and mtime of its files) is unchanged is not run again, so a killed benchmark resumes
where it stopped and a finished one re-tabulates in seconds. The table is written by
`mlm.finetune.leaderboard`.
"""
from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mlm import checkpoint as ckpt
from mlm.errors import UserError
from mlm.finetune.config import SCRATCH, FinetuneConfig
from mlm.finetune.leaderboard import HEADLINE, write_tables
from mlm.finetune.run import build_encoder, finetune
from mlm.schema import ConfigError, from_dict, read_yaml_mapping, set_path, to_dict
from mlm.storage import write_text_atomic
from mlm.tasks.kinds import TASKS
from mlm.tasks.linear_probe import linear_probe

SHORTCUTS = ("train_file", "validation_file", "test_file", "text_field", "text_pair_field", "label_field",
             "tokens_field", "tags_field")
OWN_KEYS = ("metric",)  # keys of a task entry that are the benchmark's, not mlm.finetune's
NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass
class BenchmarkConfig:
    """`python -m mlm.benchmark --config bench.yaml [key=value ...]`."""

    output_dir: str = "runs/bench"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Fine-tuning seeds (head init, data order, dropout; the random weights of scratch)."""
    checkpoints: dict[str, str] = field(default_factory=dict)
    """name: checkpoint folder or run output_dir, or "scratch" (random weights with the architecture
    and tokenizer of the first checkpoint listed)."""
    tasks: dict[str, Any] = field(default_factory=dict)
    """name: {task: <type>, train_file, validation_file, test_file, any mlm.finetune key (train.epochs: 3),
    metric: the results.json key its column shows (default: test_accuracy / test_entity_f1 / test_pearson)}."""
    finetune_config: str = ""
    """A fine-tuning YAML every cell starts from (e.g. configs/finetune.yaml); empty: the defaults."""
    finetune: dict[str, Any] = field(default_factory=dict)
    """mlm.finetune keys for every cell (a task's own keys win), e.g. {train.epochs: 5}."""
    probe: bool = True
    """Add a linear-probe row per checkpoint (sequence classification tasks)."""
    save_checkpoints: bool = False
    """Keep each cell's fine-tuned checkpoint (disk: one encoder per cell)."""

    def validate(self) -> None:
        if not self.output_dir:
            raise ConfigError("output_dir must be set")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds must be a non-empty list of distinct integers, got {self.seeds}")
        for section in ("checkpoints", "tasks"):
            entries = getattr(self, section)
            if not entries:
                raise ConfigError(f"{section} must list at least one entry (name: ...)")
            bad = next((n for n in entries if not NAME.match(str(n))), None)
            if bad is not None:
                raise ConfigError(f"{section}.{bad}: names may use letters, digits, _ . - only (they name folders)")
        bad = next((n for n, v in self.checkpoints.items() if not isinstance(v, str) or not v), None)
        if bad is not None:
            raise ConfigError(f"checkpoints.{bad} must be a checkpoint folder, a run's output_dir, or scratch")
        if all(v == SCRATCH for v in self.checkpoints.values()):
            raise ConfigError("checkpoints: scratch needs a real checkpoint listed to copy its architecture and tokenizer")
        for name, entry in self.tasks.items():
            if not isinstance(entry, dict):
                raise ConfigError(f"tasks.{name} must be a mapping (task: ..., train_file: ...), got {entry!r:.60}")


@dataclass
class Cell:
    """One run of the benchmark: fine-tuning (kind "finetune") or a linear probe (kind "probe")."""
    task: str
    checkpoint: str
    seed: int
    kind: str
    cfg: FinetuneConfig
    folder: Path

    @property
    def label(self) -> str:
        what = "linear probe" if self.kind == "probe" else "fine-tuning"
        return f"{self.task} × {self.checkpoint} × seed {self.seed} ({what})"


def flat_keys(entry: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"epochs": 3}} and {"train.epochs": 3} alike -> {"train.epochs": 3} (command-line
    overrides nest, YAML task entries are dotted)."""
    out: dict[str, Any] = {}
    for key, value in entry.items():
        if isinstance(value, dict):
            out.update(flat_keys(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def task_settings(bench: BenchmarkConfig, name: str) -> dict[str, Any]:
    """The mlm.finetune keys of one task (shortcuts like train_file become data.train_file)."""
    entry = flat_keys(bench.tasks[name])
    return {(f"data.{k}" if k in SHORTCUTS else k): v for k, v in entry.items() if k not in OWN_KEYS}


def cell_config(bench: BenchmarkConfig, task: str, source: str, architecture: str, seed: int,
                folder: Path) -> FinetuneConfig:
    """The fine-tuning config of a cell: base YAML, then `finetune`, then the task's keys, then the cell's."""
    raw = read_yaml_mapping(bench.finetune_config) if bench.finetune_config else {}
    cell = {"output_dir": str(folder), "train.seed": seed, "save_checkpoint": bench.save_checkpoints,
            "init_from": source, "architecture_from": architecture if source == SCRATCH else ""}
    for key, value in [*flat_keys(bench.finetune).items(), *task_settings(bench, task).items(), *cell.items()]:
        set_path(raw, key.split("."), value)
    try:
        cfg = from_dict(FinetuneConfig, raw)
        cfg.validate()
    except ConfigError as err:
        raise ConfigError(f"tasks.{task}: {err}") from None
    for key in ("train_file", "validation_file", "test_file"):
        path = getattr(cfg.data, key)
        if path and not Path(path).is_file():
            raise ConfigError(f"tasks.{task}.{key}: {path}: file not found")
    if not cfg.data.test_file:
        raise ConfigError(f"tasks.{task}: test_file must be set (the table reports test metrics)")
    return cfg


def resolve(name: str, path: str) -> str:
    """The checkpoint folder a `checkpoints` entry means (a run's newest valid checkpoint)."""
    try:
        return str(ckpt.resolve_checkpoint(path))
    except UserError as err:
        raise UserError(f"checkpoints.{name}: {err}") from None


def plan(bench: BenchmarkConfig) -> list[Cell]:
    """Every cell, task by task, checkpoint by checkpoint, seed by seed; checked before any runs."""
    resolved = {name: (SCRATCH if path == SCRATCH else resolve(name, path)) for name, path in bench.checkpoints.items()}
    architecture = next(p for p in resolved.values() if p != SCRATCH)
    root = Path(bench.output_dir) / "cells"
    cells = []
    for task in bench.tasks:
        check_metric(bench, task)
        for name, source in resolved.items():
            for seed in bench.seeds:
                folder = root / task / name / f"seed_{seed}"
                cfg = cell_config(bench, task, source, architecture, seed, folder)
                cells.append(Cell(task, name, seed, "finetune", cfg, folder))
                if bench.probe and cfg.task == "sequence_classification":
                    cells.append(Cell(task, name, seed, "probe", cfg, folder.with_name(f"probe_seed_{seed}")))
    return cells


def check_metric(bench: BenchmarkConfig, task: str) -> None:
    """A task's `metric` must be a validation_/test_ metric its task type reports."""
    metric = bench.tasks[task].get("metric")
    kind = flat_keys(bench.tasks[task]).get("task", "sequence_classification")
    if metric is None or kind not in TASKS:
        return  # no metric chosen, or an unknown type (cell_config names that key)
    known = [f"{split}_{name}" for split in ("test", "validation") for name in TASKS[kind].metric_names]
    if metric not in known:
        raise ConfigError(f"tasks.{task}.metric: {metric!r} is not a metric of {kind}; choose one of {', '.join(known)}")


def spec(cell: Cell) -> dict[str, Any]:
    """What a cell's result depends on: its config (not its folder), the starting checkpoint's
    manifest, and the size and mtime of its data files. A cached cell is reused only when equal."""
    config = to_dict(cell.cfg)
    config.pop("output_dir")
    files = {}
    for key in ("train_file", "validation_file", "test_file"):
        path = getattr(cell.cfg.data, key)
        if path:
            stat = Path(path).stat()
            files[key] = [str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns]
    source = cell.cfg.init_from if cell.cfg.init_from != SCRATCH else cell.cfg.architecture_from
    manifest = Path(source) / ckpt.MANIFEST_FILE
    return {"kind": cell.kind, "config": config, "files": files,
            "manifest": manifest.read_text(encoding="utf-8") if manifest.is_file() else ""}


def cached(cell: Cell) -> dict[str, Any] | None:
    """The results of a finished cell with an unchanged spec, else None."""
    results, saved_spec = cell.folder / "results.json", cell.folder / "cell.json"
    if not (results.is_file() and saved_spec.is_file()):
        return None
    try:
        if json.loads(saved_spec.read_text(encoding="utf-8")) != json.loads(json.dumps(spec(cell))):
            return None
        return json.loads(results.read_text(encoding="utf-8"))
    except ValueError:
        return None


def run_probe(cell: Cell) -> dict[str, Any]:
    """A linear probe of the cell's encoder (the pretrained one, or scratch's random twin for this seed)."""
    model, tokenizer = build_encoder(cell.cfg)
    d = cell.cfg.data
    result = linear_probe(model, tokenizer, d.train_file, d.test_file, d.validation_file, d.text_field,
                          d.label_field, pair_field=d.text_pair_field)
    cell.folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(cell.folder / "results.json", json.dumps(result, indent=2), what="the probe results")
    return result


def run_cell(cell: Cell) -> dict[str, Any]:
    """Run one cell, then record its spec (written last: a cell killed before it reruns)."""
    torch.manual_seed(cell.seed)
    result = run_probe(cell) if cell.kind == "probe" else finetune(cell.cfg)
    write_text_atomic(cell.folder / "cell.json", json.dumps(spec(cell), indent=2), what="the cell spec")
    return result


def run_benchmark(bench: BenchmarkConfig) -> dict[str, Any]:
    """Run (or reuse) every cell and write results.json and results.md; returns the summary."""
    bench.validate()
    cells = plan(bench)
    started, done_now, results = time.monotonic(), 0, []
    for i, cell in enumerate(cells, 1):
        found = cached(cell)
        if found is not None:
            print(f"[{i}/{len(cells)}] {cell.label}: cached", file=sys.stderr)
        else:
            left = len(cells) - i
            eta = f", ~{(time.monotonic() - started) / done_now * (left + 1) / 60:.1f} min left" if done_now else ""
            print(f"[{i}/{len(cells)}] {cell.label}: running ({left} after this{eta})", file=sys.stderr)
            found = run_cell(cell)
            done_now += 1
        results.append((cell, found))
    rows = [{"task": c.task, "task_type": c.cfg.task, "checkpoint": c.checkpoint, "seed": c.seed, "kind": c.kind,
             "folder": str(c.folder), "results": r} for c, r in results]
    types = {c.task: c.cfg.task for c in cells}
    metrics = {t: bench.tasks[t].get("metric") or HEADLINE[types[t]] for t in bench.tasks}
    summary = write_tables(Path(bench.output_dir), rows, metrics, list(bench.checkpoints), bench.seeds)
    summary["cells_run"], summary["cells_cached"] = done_now, len(cells) - done_now
    return summary
