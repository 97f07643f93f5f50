"""Downstream gain against pretraining compute: test accuracy after fine-tuning, per pretraining budget.

    python scripts/pretraining_curve.py --spec configs/curve.yaml

The spec (YAML) names the tasks, the seeds, and the pretraining points:

    out: runs/curve
    base_config: configs/base.yaml
    finetune_config: configs/finetune.yaml
    tasks:                             # name: a folder of train/dev/test.jsonl (sequence classification),
      topics120: runs/tasks/stdlib_topics          # or {folder, task, metric} for another task type
      topics30: runs/tasks/stdlib_topics_small
      params: {folder: runs/tasks/stdlib_params, task: token_classification, metric: test_entity_f1}
    seeds: [0, 1, 2]
    finetune: [train.num_threads=1]    # overrides for every fine-tuning run
    x_label: pretraining CPU-minutes   # the plot's x axis
    points:                            # name: {minutes: x, pretrain: [overrides of base_config]}
      b2:  {minutes: 2,  pretrain: [train.budget_minutes=2, train.max_steps=1000000, train.num_threads=1]}
      b10: {minutes: 10, pretrain: [train.budget_minutes=10, train.max_steps=1000000, train.num_threads=1]}

Every point is pretrained once (`python -m mlm.train`, into <out>/pretrain/<name>; a finished run
already there, e.g. a copy of a `configs/base.yaml` run, is used as is), then fine-tuned on every
task with every seed (`python -m mlm.finetune`); the same architecture from random weights
("scratch") and a baseline without a network are the references: TF-IDF + logistic regression
(`scripts/tfidf_baseline.py`) for sequence classification, per-token logistic regression over
window features (`scripts/token_baseline.py`) for token classification. Each finished run is kept
and skipped when the script runs again, so it resumes. Writes <out>/curve.json (every run, and
mean ± sd per point and task) and <out>/curve.png.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from tfidf_baseline import tfidf_baseline  # noqa: E402
from token_baseline import baseline as token_baseline  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], what: str) -> None:
    log(what)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, *cmd], cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed:\n{proc.stderr[-3000:]}")
    log(f"  done in {time.monotonic() - started:.0f} s")


def pretrain(spec: dict, name: str, point: dict) -> Path:
    out = Path(spec["out"]) / "pretrain" / name
    final = out / "final_metrics.json"
    if not final.is_file() or json.loads(final.read_text()).get("stopped") not in ("max_steps", "budget"):
        run(["-m", "mlm.train", "--config", spec["base_config"], f"output_dir={out}", "log.progress=false",
             *point.get("pretrain", [])], f"pretraining {name}")
    return out


def task_spec(entry) -> dict:
    """A task entry: a folder (sequence classification, test accuracy) or {folder, task, metric}."""
    entry = {"folder": entry} if isinstance(entry, str) else dict(entry)
    entry.setdefault("task", "sequence_classification")
    entry.setdefault("metric", "test_entity_f1" if entry["task"] == "token_classification" else "test_accuracy")
    return entry


def finetune(spec: dict, init: list[str], task: str, seed: int, out: Path) -> dict:
    results = out / "results.json"
    if not results.is_file():
        entry = task_spec(spec["tasks"][task])
        folder = Path(entry["folder"])
        run(["-m", "mlm.finetune", "--config", spec["finetune_config"], *init, f"output_dir={out}",
             f"task={entry['task']}",
             f"data.train_file={folder / 'train.jsonl'}", f"data.validation_file={folder / 'dev.jsonl'}",
             f"data.test_file={folder / 'test.jsonl'}", f"train.seed={seed}", "save_checkpoint=false",
             *spec.get("finetune", [])], f"fine-tuning {out.relative_to(spec['out'])}")
    return json.loads(results.read_text())


def architecture_hash(run_dir: Path) -> str:
    """Hash of the newest checkpoint's model config and tokenizer."""
    ckpt = sorted((run_dir / "checkpoints").glob("step_*"), key=lambda p: int(p.name.split("_")[1]))[-1]
    data = (ckpt / "model_config.json").read_bytes() + (ckpt / "tokenizer.json").read_bytes()
    return hashlib.sha256(data).hexdigest()[:10]


def summarise(values: list[float]) -> dict:
    return {"mean": statistics.mean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values), "values": values}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, required=True)
    args = parser.parse_args(argv)
    spec = yaml.safe_load(args.spec.read_text())
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict] = {}
    for name, point in spec["points"].items():
        ckpt = pretrain(spec, name, point)
        final = json.loads((ckpt / "final_metrics.json").read_text())
        rows[name] = {"minutes": point["minutes"], "pretrain": point.get("pretrain", []), "steps": final.get("step"),
                      "pretrain_seconds": final.get("seconds"), "eval_accuracy": final.get("eval_accuracy")}
        # Scratch depends only on the architecture and tokenizer: points that share them share it.
        twin = f"scratch-{architecture_hash(ckpt)}"
        for task in spec["tasks"]:
            for kind, init, folder in (("pretrained", [f"init_from={ckpt}"], name),
                                       ("scratch", ["init_from=scratch", f"architecture_from={ckpt}"], twin)):
                metric = task_spec(spec["tasks"][task])["metric"]
                accs = [finetune(spec, init, task, seed, out / "finetune" / folder / kind / task / f"seed{seed}")
                        [metric] for seed in spec["seeds"]]
                rows[name][f"{kind}_{task}"] = summarise(accs)
    baselines = {task: no_network_baseline(out, task, task_spec(entry)) for task, entry in spec["tasks"].items()}
    result = {"spec": spec, "points": rows, "baselines": baselines}
    (out / "curve.json").write_text(json.dumps(result, indent=2))
    plot(result, out / "curve.png")
    print(json.dumps({name: {k: (round(v["mean"], 4), round(v["sd"], 4)) for k, v in row.items()
                             if isinstance(v, dict)} for name, row in rows.items()}, indent=1))
    print(json.dumps({t: (b["name"], round(b["score"], 4)) for t, b in baselines.items()}))
    return 0


def no_network_baseline(out: Path, task: str, entry: dict) -> dict:
    """TF-IDF + LR (sequence classification) or per-token LR (token classification), cached."""
    cached = out / "baselines" / f"{task}.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    files = [str(Path(entry["folder"]) / f"{split}.jsonl") for split in ("train", "dev", "test")]
    log(f"baseline for {task}")
    if entry["task"] == "token_classification":
        found = {"name": "per-token LR", **token_baseline(*files)}
    else:
        found = {"name": "TF-IDF + LR", **tfidf_baseline(*files)}
    found["score"] = found[entry["metric"]]
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(found, indent=1))
    return found


def plot(result: dict, path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: no plot")
        return
    tasks = list(result["spec"]["tasks"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4), squeeze=False)
    points = sorted(result["points"].values(), key=lambda r: r["minutes"])
    for ax, task in zip(axes[0], tasks):
        xs = [p["minutes"] for p in points]
        for kind, style in (("pretrained", "o-"), ("scratch", "s--")):
            ys = [p[f"{kind}_{task}"]["mean"] for p in points]
            es = [p[f"{kind}_{task}"]["sd"] for p in points]
            ax.errorbar(xs, ys, yerr=es, fmt=style, capsize=3, label=kind)
        base = result["baselines"][task]
        ax.axhline(base["score"], color="gray", linestyle=":", label=base["name"])
        ax.set(title=task, xlabel=result["spec"].get("x_label", "pretraining minutes"),
               ylabel=task_spec(result["spec"]["tasks"][task])["metric"])
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
