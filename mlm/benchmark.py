"""Task benchmark: `python -m mlm.benchmark --config configs/bench.yaml [key=value ...]`.

Fine-tunes every (task, checkpoint, seed) cell, adds linear-probe rows, and writes
`<output_dir>/results.json` and `<output_dir>/results.md` (mean ± sd over seeds, one row per
checkpoint). Finished cells are reused, so a killed run resumes (`mlm.finetune.grid`).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from mlm.errors import run_cli
from mlm.finetune.grid import BenchmarkConfig, run_benchmark
from mlm.schema import load_config

__all__ = ["BenchmarkConfig", "run_benchmark", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlm.benchmark", description=__doc__.splitlines()[0])
    parser.add_argument("--config", "-c", required=True, help="benchmark YAML (e.g. configs/bench.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. seeds=[0] output_dir=runs/b2")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides, cls=BenchmarkConfig)
    summary = run_benchmark(cfg)
    print(summary["markdown"])
    print(f"wrote {Path(cfg.output_dir) / 'results.json'} and results.md "
          f"({summary['cells_run']} cells run, {summary['cells_cached']} cached)")
    return 0


if __name__ == "__main__":
    run_cli(main)
