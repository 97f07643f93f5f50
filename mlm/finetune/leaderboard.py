"""The benchmark's tables: one row per checkpoint (and per linear probe), one column per task, mean ±
sd over seeds, and an average column, as a GLUE leaderboard row; written as results.json and results.md.

Kept apart from running the cells (`mlm.finetune.grid`) because it is pure arithmetic on finished
results: a table can be rebuilt from the cell folders without running anything.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from mlm.storage import write_text_atomic

HEADLINE = {"sequence_classification": "test_accuracy", "token_classification": "test_entity_f1",
            "regression": "test_pearson"}


def mean_sd(values: Sequence[float]) -> dict[str, Any]:
    """Mean and sample standard deviation (0 for one value) of a cell's seeds."""
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "sd": sd, "n": n, "values": list(values)}


def row_name(checkpoint: str, kind: str) -> str:
    return checkpoint if kind == "finetune" else f"{checkpoint} (linear probe)"


def tabulate(cells: Sequence[dict[str, Any]], metrics: dict[str, str], checkpoints: Sequence[str],
             seeds: Sequence[int]) -> dict[str, dict[str, Any]]:
    """{row: {task: mean/sd/values, "average": ...}}: fine-tuning rows first, then probe rows, each in
    the order checkpoints are listed. The average is the per-seed mean over the tasks (only for rows
    with every task), then mean ± sd over seeds."""
    table: dict[str, dict[str, Any]] = {}
    for kind in ("finetune", "probe"):
        for checkpoint in checkpoints:
            mine = [c for c in cells if c["checkpoint"] == checkpoint and c["kind"] == kind]
            if not mine:
                continue
            row: dict[str, Any] = {}
            per_seed: dict[int, dict[str, float]] = {}
            for task, metric in metrics.items():
                found = {c["seed"]: c["results"].get(metric) for c in mine if c["task"] == task}
                values = [found[s] for s in seeds if isinstance(found.get(s), (int, float))]
                if values:
                    row[task] = mean_sd(values)
                for s in seeds:
                    if isinstance(found.get(s), (int, float)):
                        per_seed.setdefault(s, {})[task] = float(found[s])
            complete = [sum(v.values()) / len(v) for s, v in sorted(per_seed.items()) if len(v) == len(metrics)]
            if len(row) == len(metrics) and complete:
                row["average"] = mean_sd(complete)
            table[row_name(checkpoint, kind)] = row
    return table


def markdown(table: dict[str, dict[str, Any]], metrics: dict[str, str], seeds: Sequence[int]) -> str:
    """The leaderboard as a Markdown table, saying which metric each column shows."""
    header = ["checkpoint"] + [f"{task} ({metric})" for task, metric in metrics.items()] + ["average"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in table.items():
        cells = [name] + [fmt(row.get(task)) for task in metrics] + [fmt(row.get("average"))]
        lines.append("| " + " | ".join(cells) + " |")
    note = (f"Mean ± sd over seeds {', '.join(map(str, seeds))} (sample sd; n seeds per cell). Each column is the "
            "results.json key in brackets, on the test split. Rows: fine-tuning from each checkpoint, then linear "
            "probes of the frozen encoder (sequence classification only). Average: the mean over tasks per seed, "
            "then mean ± sd over seeds; only for rows with every task.")
    return "# Task benchmark\n\n" + "\n".join(lines) + "\n\n" + note + "\n"


def fmt(stat: dict[str, Any] | None) -> str:
    if not stat:
        return "—"
    return f"{stat['mean']:.3f} ± {stat['sd']:.3f}"


def write_tables(out_dir: Path, cells: Sequence[dict[str, Any]], metrics: dict[str, str],
                 checkpoints: Sequence[str], seeds: Sequence[int]) -> dict[str, Any]:
    """Write `out_dir/results.json` (table, metrics, every cell) and `out_dir/results.md`."""
    table = tabulate(cells, metrics, checkpoints, seeds)
    summary = {"seeds": list(seeds), "checkpoints": list(checkpoints), "metrics": metrics, "table": table,
               "cells": [{k: v for k, v in c.items() if k != "results"} | {"value": c["results"].get(metrics[c["task"]])}
                         for c in cells]}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "results.json", json.dumps(summary, indent=2), what="the benchmark results")
    text = markdown(table, metrics, seeds)
    write_text_atomic(out_dir / "results.md", text, what="the benchmark table")
    summary["markdown"] = text
    return summary
