"""Shared plumbing for the experiment scripts in this folder.

Every experiment is `python scripts/experiments/<name>.py [--config run.yaml] [--out DIR]
[--work-dir DIR] [--tiny] [--seed N] [key.sub=value ...]` and writes `<name>.json` (its numbers)
and `<name>.png` (its plot, when matplotlib is installed) into `--out` (default docs/experiments).

The model and data settings are an ordinary `mlm` run config, built in three layers: this
module's small CPU-sized defaults (`DEFAULTS`, or `TINY` with `--tiny` for smoke tests), then
the `--config` YAML, then `key.sub=value` overrides. On a GPU the same scripts scale up by config,
e.g. `--config configs/base.yaml model.hidden_size=768 train.max_steps=20000`.

Pretraining is shared: `pretrained_checkpoint(cfg, work_dir)` runs the library's `train(cfg)`
once per distinct config into `<work-dir>/pretrain-<hash>/` and every later call (from any
experiment) reuses the finished checkpoint; an interrupted pretraining resumes where it stopped.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from mlm import checkpoint as ckpt_io  # noqa: E402
from mlm.config import Config, config_to_dict, load_config  # noqa: E402
from mlm.data import BatchPlan, BlockDataset, prepare_data  # noqa: E402
from mlm.loop import train_step  # noqa: E402
from mlm.optim import build_optimizer, lr_at, set_lr  # noqa: E402
from mlm.runtime import Runtime, seed_everything, setup_runtime  # noqa: E402
from mlm.tokenizer import special_token_ids  # noqa: E402
from mlm.train import train  # noqa: E402

DEFAULT_OUT = REPO / "docs" / "experiments"
DEFAULT_WORK = REPO / "runs" / "experiments"

# The experiment scale: a 4-layer, 128-wide encoder on 64-token blocks of the stdlib-docstring
# corpus (~0.56M training tokens). fp32: on CPU it is faster than bf16 autocast at this width and
# the gradient statistics of mask_ratio.py are not blurred by rounding.
DEFAULTS: dict[str, Any] = {
    "data.vocab_size": 4096,
    "data.seq_len": 64,
    "model.max_seq_len": 64,
    "model.hidden_size": 128,
    "model.num_layers": 4,
    "model.num_heads": 4,
    "model.intermediate_size": 512,
    "train.batch_size": 32,
    "train.max_steps": 800,
    "train.lr": 2e-3,
    "train.warmup_steps": 50,
    "train.schedule": "cosine",
    "train.precision": "fp32",
    "train.log_every": 50,
    "eval.every": 200,
    "eval.batches": 0,  # the whole (small) validation split
    "eval.batch_size": 64,
    "checkpoint.every": 200,
    "checkpoint.keep": 1,
    "log.progress": False,
}
# Smoke-test scale: seconds, not minutes. Numbers at this size mean nothing.
TINY: dict[str, Any] = {
    **DEFAULTS,
    "data.vocab_size": 1000,
    "data.seq_len": 32,
    "model.max_seq_len": 32,
    "model.hidden_size": 32,
    "model.num_layers": 2,
    "model.num_heads": 2,
    "model.intermediate_size": 64,
    "train.batch_size": 8,
    "train.max_steps": 12,
    "train.warmup_steps": 2,
    "train.log_every": 4,
    "eval.every": 0,
    "eval.batches": 2,
    "eval.batch_size": 16,
    "checkpoint.every": 0,
}


# ---------------------------------------------------------------- command line

def make_parser(name: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python scripts/experiments/{name}.py", description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", "-c", default=None,
                        help="mlm run YAML for the model/data/pretraining (layered over this folder's defaults)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"where <name>.json/.png go (default {DEFAULT_OUT.relative_to(REPO)})")
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK,
                        help="runs and the shared pretraining cache (default runs/experiments)")
    parser.add_argument("--tiny", action="store_true", help="smoke-test size (seconds; the numbers mean nothing)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--replot", action="store_true",
                        help="only redraw <name>.png from an existing <name>.json in --out (no computation)")
    parser.add_argument("--suffix", default="", help="appended to the output names: <name><suffix>.json/.png")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides of the run config, e.g. train.max_steps=2000")
    return parser


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _as_override(key: str, value: Any) -> str:
    return f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"


def build_config(args: argparse.Namespace, extra_defaults: dict[str, Any] | None = None) -> Config:
    """Defaults (DEFAULTS or TINY, plus the experiment's own), under --config, under overrides."""
    defaults = dict(TINY if args.tiny else DEFAULTS)
    defaults.update(extra_defaults or {})
    defaults["train.seed"] = args.seed
    defaults["data.cache_dir"] = str(Path(args.work_dir) / "data")
    defaults["output_dir"] = str(Path(args.work_dir) / "unused")
    if args.threads:
        defaults["train.num_threads"] = args.threads
    in_yaml: set[str] = set()
    if args.config:
        raw = yaml.safe_load(Path(args.config).read_text(encoding="utf-8")) or {}
        in_yaml = set(_flatten(raw)) if isinstance(raw, dict) else set()
    layered = [_as_override(k, v) for k, v in defaults.items() if k not in in_yaml]
    cfg = load_config(args.config, layered + list(args.overrides))
    if args.threads:
        torch.set_num_threads(args.threads)
    return cfg


def clone_config(cfg: Config, **changes: Any) -> Config:
    """A deep copy of `cfg` with dotted-key changes, e.g. clone_config(cfg, **{"collate.mlm_probability": 0.3})."""
    flat = _flatten(config_to_dict(cfg))
    flat.update(changes)
    return load_config(None, [_as_override(k, v) for k, v in flat.items()])


def start(args: argparse.Namespace) -> tuple[Config, Runtime]:
    """What every experiment does first: its layered config, the seeds, then device and threads."""
    cfg = build_config(args)
    seed_everything(args.seed)
    t = cfg.train
    return cfg, setup_runtime(t.device, t.precision, t.num_threads, t.deterministic)


def special_mask(tokenizer) -> np.ndarray:
    """(V,) bool, True at the special ids: the library's one set (never masked, logits -inf)."""
    mask = np.zeros(tokenizer.get_vocab_size(), dtype=bool)
    mask[special_token_ids(tokenizer)] = True
    return mask


# ---------------------------------------------------------------- shared pretraining

def config_hash(cfg: Config) -> str:
    """Identity of a pretraining run: everything that changes the weights (not paths or logging)."""
    d = config_to_dict(cfg)
    for key in ("output_dir", "log", "checkpoint"):
        d.pop(key, None)
    d["data"].pop("cache_dir", None)
    d["data"].pop("num_proc", None)
    d["train"].pop("num_threads", None)
    d["train"].pop("log_every", None)
    d["eval"].pop("every", None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def pretrained_checkpoint(cfg: Config, work_dir: str | Path, tag: str = "pretrain") -> Path:
    """Checkpoint of `train(cfg)` run to the end, from `<work_dir>/<tag>-<hash>/` when already there."""
    out = Path(work_dir) / f"{tag}-{config_hash(cfg)}"
    cfg = clone_config(cfg, output_dir=str(out))
    done = _finished_checkpoint(out, cfg.train.max_steps)
    if done is not None:
        log(f"reusing pretrained checkpoint {done}")
        return done
    log(f"pretraining {cfg.train.max_steps} steps into {out} (shared by the experiments; reused next time)")
    t0 = time.monotonic()
    train(cfg)
    done = _finished_checkpoint(out, cfg.train.max_steps)
    if done is None:
        raise RuntimeError(f"pretraining in {out} stopped before train.max_steps={cfg.train.max_steps}")
    log(f"pretraining done in {time.monotonic() - t0:.0f}s")
    (out / "pretrain_seconds.txt").write_text(f"{time.monotonic() - t0:.1f}\n")
    return done


def shared_checkpoint(cfg: Config, work_dir: str | Path, timings: dict[str, float]) -> Path:
    """`pretrained_checkpoint(cfg, work_dir)`, its wall time (training, or finding the cached run)
    recorded as timings["shared_pretraining_or_reuse"]."""
    t0 = time.monotonic()
    checkpoint = pretrained_checkpoint(cfg, work_dir)
    timings["shared_pretraining_or_reuse"] = time.monotonic() - t0
    return checkpoint


def _finished_checkpoint(out: Path, steps: int) -> Path | None:
    found = ckpt_io.latest_checkpoint(out / "checkpoints")
    if found is not None and found.name == f"step_{steps}":
        return found
    return None


def read_metrics(checkpoint: Path) -> list[dict[str, Any]]:
    """The metrics.jsonl events of the run that wrote `checkpoint`."""
    f = checkpoint.parent.parent / "metrics.jsonl"
    if not f.is_file():
        return []
    return [json.loads(line) for line in f.read_text().splitlines() if line.strip()]


def pretrain_metrics(checkpoint: Path) -> dict[str, Any]:
    f = checkpoint.parent.parent / "final_metrics.json"
    return json.loads(f.read_text()) if f.is_file() else {}


# ---------------------------------------------------------------- data and training helpers

def step_blocks(dataset: BlockDataset, batch_size: int, seed: int, step: int) -> np.ndarray:
    """The (batch, seq) token blocks of training step `step`: the ones the trainer takes
    (`mlm.data.BatchPlan`: a per-epoch permutation of the blocks, sliced in order)."""
    return np.asarray(dataset[BatchPlan(len(dataset), batch_size, seed).indices(step)], dtype=np.int64)


def fixed_blocks(dataset: BlockDataset, count: int, seed: int) -> np.ndarray:
    """`count` distinct blocks of `dataset` chosen with `seed` (count capped at the dataset size)."""
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(dataset), size=min(count, len(dataset)), replace=False))
    return np.asarray(dataset[idx], dtype=np.int64)


def run_training(model: torch.nn.Module, cfg: Config, rt: Runtime, batch_fn: Callable[[int], dict],
                 steps: int, eval_fn: Callable[[int], dict] | None = None, eval_every: int = 0,
                 step_hook: Callable[[int, Any, dict], dict] | None = None, label: str = "") -> list[dict]:
    """The library's optimizer, schedule and `train_step`, with batches from `batch_fn(step)`.

    For experiments whose batches the standard trainer cannot make (surprisal weights, a causal
    objective). Returns one record per step (loss, grad_norm, lr, masked tokens, plus whatever
    `step_hook` adds) and, every `eval_every` steps and at the end, `eval_fn(step)`'s metrics.
    """
    t = cfg.train
    optimizer = build_optimizer(model, t.lr, t.weight_decay, (t.beta1, t.beta2), t.eps, rt.device)
    history: list[dict] = []
    t0 = time.monotonic()
    model.train()
    for step in range(steps):
        lr = lr_at(step, t.lr, t.warmup_steps, steps, t.schedule, t.min_lr_ratio)
        set_lr(optimizer, lr)
        batch = batch_fn(step)
        result = train_step(model, optimizer, [batch], rt, t.grad_clip)
        rec: dict[str, Any] = {"step": step + 1, "loss": result.loss, "grad_norm": result.grad_norm, "lr": lr,
                               "masked_tokens": result.targets}
        if step_hook is not None:
            rec.update(step_hook(step, result, batch))
        if eval_fn is not None and ((eval_every and (step + 1) % eval_every == 0) or step + 1 == steps):
            rec.update(eval_fn(step + 1))
            model.train()
        history.append(rec)
        if (step + 1) % max(1, cfg.train.log_every) == 0 or step + 1 == steps:
            extra = " ".join(f"{k}={v:.4g}" for k, v in rec.items() if k.startswith("eval") and isinstance(v, float))
            log(f"{label} step {step + 1}/{steps} loss={result.loss:.4f} grad_norm={result.grad_norm:.3f} {extra} "
                f"({time.monotonic() - t0:.0f}s)")
    model.eval()
    return history


# ---------------------------------------------------------------- outputs

def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _jsonable(obj: Any) -> Any:
    """Plain JSON: numpy/torch scalars to Python, non-finite floats to the strings "inf"/"-inf"/"nan"."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.generic, torch.Tensor)):
        obj = obj.item()
    if isinstance(obj, float):
        if math.isnan(obj):
            return "nan"
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
        return float(f"{obj:.6g}")
    if isinstance(obj, Path):
        return str(obj)
    return obj


def environment(rt: Runtime | None = None) -> dict[str, Any]:
    return {"python": platform.python_version(), "torch": torch.__version__,
            "device": str(rt.device) if rt else "cpu", "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "machine": platform.machine()}


def write_json(out_dir: str | Path, name: str, result: dict[str, Any]) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(_jsonable(result), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    log(f"wrote {path}")
    return path


def write_plot(out_dir: str | Path, name: str, draw: Callable[[Any], Any]) -> Path | None:
    """`draw(plt)` returns a figure; saved as <name>.png. Without matplotlib: a note, no PNG."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log(f"matplotlib is not installed (pip install matplotlib, or the 'plot' extra): no {name}.png")
        return None
    fig = draw(plt)
    path = Path(out_dir) / f"{name}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    log(f"wrote {path}")
    return path


def replot(out_dir: str | Path, name: str, draw: Callable[[Any, dict], Any]) -> int:
    """Redraw <name>.png from <name>.json (e.g. after changing the figure code)."""
    result = json.loads((Path(out_dir) / f"{name}.json").read_text(encoding="utf-8"))
    write_plot(out_dir, name, lambda plt: draw(plt, result))
    return 0


def command_line(name: str, argv: Sequence[str] | None) -> str:
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python", f"scripts/experiments/{name}.py", *args])


def describe_config(cfg: Config) -> dict[str, Any]:
    d = config_to_dict(cfg)
    m, t = d["model"], d["train"]
    return {"model": {k: m[k] for k in ("hidden_size", "num_layers", "num_heads", "intermediate_size",
                                        "position", "norm")},
            "data": {"vocab_size": d["data"]["vocab_size"], "seq_len": d["data"]["seq_len"],
                     "corpus": d["data"]["train_files"] or "stdlib docstrings"},
            "train": {k: t[k] for k in ("max_steps", "batch_size", "lr", "warmup_steps", "schedule", "seed",
                                        "precision")},
            "mlm_probability": d["collate"]["mlm_probability"]}


def load_data(cfg: Config):
    return prepare_data(cfg, progress=False)
