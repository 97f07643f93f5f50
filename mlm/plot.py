"""`python -m mlm.plot <output_dir>`: loss, accuracy and learning-rate curves from metrics.jsonl.

matplotlib is an optional extra (`pip install -e ".[plot]"`); without it this says so in one line.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

from mlm.errors import UserError, run_cli


def read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        raise UserError(f"{path}: no metrics.jsonl here (is this a run's output_dir?)")
    events = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            events.append(json.loads(line))
        except ValueError:
            raise UserError(f"{path}:{n}: not a JSON line") from None
    return events


def series(events: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(e["step"], e[key]) for e in events if isinstance(e.get(key), (int, float))]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot(run_dir: Path, out: Path) -> Path:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError('matplotlib is not installed; pip install -e ".[plot]"') from None
    events = read_metrics(run_dir / "metrics.jsonl")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for key, label in (("train_loss", "train"), ("eval_loss", "validation")):
        axes[0].plot(*series(events, key), label=label, marker="o" if key == "eval_loss" else None)
    axes[0].set(title="masked loss", xlabel="step")
    axes[0].legend()
    axes[1].plot(*series(events, "eval_accuracy"), marker="o")
    axes[1].set(title="masked-token accuracy (validation)", xlabel="step")
    axes[2].plot(*series(events, "lr"))
    axes[2].set(title="learning rate", xlabel="step")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlm.plot", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="PNG path (default: <run_dir>/curves.png)")
    args = parser.parse_args(argv)
    out = plot(args.run_dir, args.out or args.run_dir / "curves.png")
    print(out)
    return 0


if __name__ == "__main__":
    run_cli(main)
