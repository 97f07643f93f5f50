"""Checkpoints that survive kill -9: step-numbered folders written atomically, verified on load.

A checkpoint folder holds everything needed to continue the run and to use the model:
`model.safetensors` (weights of the unwrapped module), `model_config.json`, `tokenizer.json`,
`config.yaml` (the run's resolved config), `trainer_state.pt` (optimizer, step, data
position, RNGs; read with `torch.load(weights_only=True)`, never unpickled freely) and
`manifest.json` (size and SHA-256 of every file), written last. The folder is built under a
temporary name, fsynced, then renamed, so a crash mid-save leaves the previous checkpoint
as the newest complete one; a folder whose files don't match its manifest is skipped.

This module is the only writer and reader of checkpoint folders: pretraining, fine-tuning (which
adds its head's files) and the transformers import all save through `save_checkpoint`. It also
holds the Stateful parts of a trainer state that are not the model: the optimizer gathered to
full tensors (also under FSDP2) and the RNG states.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_optimizer_state_dict)

from mlm.errors import UserError
from mlm.model import INIT_ONLY_KEYS, MLMModel, ModelConfig
from mlm.schema import from_dict
from mlm.storage import TEMP_PREFIX, StorageError, is_disk_full
from mlm.tokenizer import load_tokenizer

MODEL_FILE = "model.safetensors"
MODEL_CONFIG_FILE = "model_config.json"
TOKENIZER_FILE = "tokenizer.json"
RUN_CONFIG_FILE = "config.yaml"
STATE_FILE = "trainer_state.pt"
MANIFEST_FILE = "manifest.json"
REJECTED_DIR = "rejected"  # checkpoints that failed verification, moved aside, never deleted
_STEP_DIR = re.compile(r"^step_(\d+)$")


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 4 MiB pieces (weights can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@dataclass
class CheckpointContents:
    """What one checkpoint folder holds. `extra_tensors` / `extra_json` are further files covered by
    the manifest (fine-tuning's head: `classifier.safetensors`, `classifier.json`)."""
    model_state: dict[str, torch.Tensor]
    model_config: dict[str, Any]
    tokenizer_json: str
    run_config_yaml: str
    trainer_state: dict[str, Any] | None = None
    extra_tensors: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    extra_json: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(root: str | Path, step: int, contents: CheckpointContents, keep: int = 0) -> Path:
    """Write `root/step_<step>/` atomically and prune to the newest `keep` verified ones (0: keep all).

    A write that fails (disk full, read-only, quota) removes its temporary folder and raises a
    one-line `StorageError` naming the newest intact checkpoint; the folders already there are
    untouched. A checkpoint that fails verification is never deleted or overwritten: it is moved
    into `root/rejected/` when its step is written again.
    """
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StorageError.from_os_error(err, "checkpoints", root) from None
    final = root / f"step_{step}"
    tmp = root / f"{TEMP_PREFIX}step_{step}_{os.getpid()}"
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        _write_files(tmp, step, contents)
        _write_manifest(tmp, step)
    except Exception as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if not _is_write_failure(err):
            raise
        raise _save_error(err, root, step, contents) from None
    _move_into_place(tmp, final)
    if keep > 0:
        prune_checkpoints(root, keep)
    return final


def _write_manifest(folder: Path, step: int) -> None:
    files = sorted(p.name for p in folder.iterdir())
    for name in files:
        with open(folder / name, "rb") as fh:
            os.fsync(fh.fileno())
    manifest = {"step": step, "files": {n: {"size": (folder / n).stat().st_size, "sha256": sha256_file(folder / n)}
                                        for n in files}}
    with open(folder / MANIFEST_FILE, "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    _fsync_dir(folder)


def _is_write_failure(err: BaseException) -> bool:
    """OSError, or a serializer's wrapping of one (torch: RuntimeError "file write failed" /
    "unexpected pos"; safetensors: SafetensorError with the OS error in its text)."""
    if isinstance(err, (OSError, SafetensorError)):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and ("write" in text or "unexpected pos" in text or is_disk_full(err))


def _save_error(err: BaseException, root: Path, step: int, contents: CheckpointContents) -> StorageError:
    newest = latest_verified(root)
    kept = f"the newest intact checkpoint is {newest}" if newest else "no intact checkpoint exists yet"
    advice = (f"{kept}; free space, lower checkpoint.keep, or use another output_dir, then run the same "
              "command again to resume")
    return StorageError.from_os_error(err, f"checkpoint step_{step}", root, needed=contents_bytes(contents),
                                      advice=advice)


def contents_bytes(contents: CheckpointContents) -> int:
    """About how many bytes a checkpoint of `contents` takes on disk."""
    def tensor_bytes(value: Any) -> int:
        if isinstance(value, torch.Tensor):
            return value.numel() * value.element_size()
        if isinstance(value, dict):
            return sum(tensor_bytes(v) for v in value.values())
        if isinstance(value, (list, tuple)):
            return sum(tensor_bytes(v) for v in value)
        return 0
    text = len(contents.tokenizer_json) + len(contents.run_config_yaml)
    return tensor_bytes(contents.model_state) + tensor_bytes(contents.trainer_state) + \
        tensor_bytes(contents.extra_tensors) + text


def _move_into_place(tmp: Path, final: Path) -> None:
    """Rename the finished folder to its step name. An existing folder of that step (the end of a
    run right after a periodic save) is replaced if it verifies, moved to rejected/ if it does not."""
    old = None
    if final.exists():
        if verify_checkpoint(final) is not None:
            set_aside(final)
        else:
            old = final.with_name(f"{TEMP_PREFIX}replaced_{final.name}_{os.getpid()}")
            os.replace(final, old)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def prune_checkpoints(root: str | Path, keep: int) -> list[Path]:
    """Delete verified checkpoints beyond the newest `keep` verified ones; unverified folders are
    never deleted. Returns what was deleted."""
    verified = [p for p in reversed(list_checkpoints(root)) if verify_checkpoint(p) is None]
    for old in verified[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    return verified[keep:]


def set_aside(path: Path) -> Path:
    """Move a checkpoint that failed verification into `<root>/rejected/` (never deleted)."""
    target_dir = path.parent / REJECTED_DIR
    target_dir.mkdir(exist_ok=True)
    target = target_dir / path.name
    n = 1
    while target.exists():
        target = target_dir / f"{path.name}.{n}"
        n += 1
    os.replace(path, target)
    return target


def resume_point(root: str | Path, reject_unverified: bool) -> Path | None:
    """The checkpoint a run in `root` resumes from, deciding what to do with those that fail verification.

    Newer checkpoints that fail verification while an older one verifies are moved to rejected/
    (warned), so the run cannot overwrite them when it reaches their step. When checkpoints exist
    and none verifies, the run stops with the list and the way out, unless `reject_unverified`
    moves them aside and lets it start from step 0.
    """
    found = list_checkpoints(root)
    problems = {p: verify_checkpoint(p) for p in found}
    good = [p for p in found if problems[p] is None]
    broken = [p for p in found if problems[p] is not None]
    if found and not good and not reject_unverified:
        first = broken[-1]
        raise UserError(f"{Path(root)}: no checkpoint verifies ({', '.join(p.name for p in broken)}; "
                        f"{first.name}: {problems[first]}); nothing was changed. Resume elsewhere with a new "
                        f"output_dir, or set checkpoint.reject_unverified=true to move them into "
                        f"{Path(root) / REJECTED_DIR} and start from step 0")
    newest = good[-1] if good else None
    for path in broken:
        if newest is None or path.name != newest.name:
            target = set_aside(path)
            warnings.warn(f"checkpoint {path} does not verify ({problems[path]}); moved to {target}", stacklevel=2)
    return newest


def _write_files(folder: Path, step: int, contents: CheckpointContents) -> None:
    # safetensors refuses shared storage (tied embeddings): store contiguous copies, the
    # model re-ties on load because only the input embedding is a real parameter.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in contents.model_state.items()}
    save_file(tensors, str(folder / MODEL_FILE), metadata={"format": "pt", "step": str(step)})
    (folder / MODEL_CONFIG_FILE).write_text(json.dumps(contents.model_config, indent=2), encoding="utf-8")
    (folder / TOKENIZER_FILE).write_text(contents.tokenizer_json, encoding="utf-8")
    (folder / RUN_CONFIG_FILE).write_text(contents.run_config_yaml, encoding="utf-8")
    if contents.trainer_state is not None:
        torch.save(contents.trainer_state, folder / STATE_FILE)
    for name, state in contents.extra_tensors.items():
        save_file({k: v.detach().to("cpu").contiguous() for k, v in state.items()}, str(folder / name),
                  metadata={"format": "pt"})
    for name, value in contents.extra_json.items():
        (folder / name).write_text(json.dumps(value, indent=2), encoding="utf-8")


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete-looking `step_<N>` folders under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def verify_checkpoint(path: str | Path) -> str | None:
    """None when every file matches the manifest, else what is wrong (one line)."""
    path = Path(path)
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        return f"{manifest_path} is missing (incomplete save?)"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = manifest["files"]
    except (ValueError, KeyError, TypeError):
        return f"{manifest_path} is not a valid manifest"
    for name, meta in files.items():
        f = path / name
        if not f.is_file():
            return f"{f} is missing"
        if f.stat().st_size != meta["size"]:
            return f"{f} has {f.stat().st_size} bytes, manifest says {meta['size']} (truncated?)"
        if sha256_file(f) != meta["sha256"]:
            return f"{f} does not match its SHA-256 in the manifest (corrupted?)"
    return None


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest checkpoint under `root` that verifies; warns about each one skipped."""
    for path in reversed(list_checkpoints(root)):
        problem = verify_checkpoint(path)
        if problem is None:
            return path
        warnings.warn(f"skipping checkpoint {path}: {problem}", stacklevel=2)
    return None


def latest_verified(root: str | Path) -> Path | None:
    """Like `latest_checkpoint`, silently (for messages)."""
    return next((p for p in reversed(list_checkpoints(root)) if verify_checkpoint(p) is None), None)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or a run's output_dir meaning its newest valid checkpoint."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: checkpoint not found")
    if (path / MANIFEST_FILE).is_file() or (path / MODEL_FILE).is_file():
        problem = verify_checkpoint(path)
        if problem is not None:
            raise UserError(f"{path}: broken checkpoint: {problem}")
        return path
    for root in (path / "checkpoints", path):
        found = latest_checkpoint(root)
        if found is not None:
            return found
    raise UserError(f"{path}: no valid checkpoint in this folder (expected {MODEL_FILE} and {MANIFEST_FILE}, "
                    f"or checkpoints/step_<N>/)")


def load_model_config(path: str | Path) -> dict[str, Any]:
    f = Path(path) / MODEL_CONFIG_FILE
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{f}: missing model config") from None
    except ValueError:
        raise UserError(f"{f}: not valid JSON") from None


def load_model_weights(path: str | Path, name: str = MODEL_FILE) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file of the checkpoint (the model's by default)."""
    f = Path(path) / name
    if not f.is_file():
        raise UserError(f"{f}: missing weights file")
    try:
        return load_file(str(f))
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f"{f}: unreadable safetensors file ({err})") from None


def check_resumable(checkpoint: str | Path, current: dict[str, Any]) -> None:
    """Refuse to resume when the model config changed since `checkpoint` (init-only keys aside)."""
    saved = load_model_config(checkpoint)
    saved = {**{k: current[k] for k in INIT_ONLY_KEYS if k in current}, **saved}  # absent from older checkpoints
    diffs = [k for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]
    if diffs:
        k = diffs[0]
        raise UserError(f"{checkpoint}: cannot resume, the model config changed (model.{k}: checkpoint has "
                        f"{saved.get(k)!r}, config now has {current.get(k)!r}); use a new output_dir or restore "
                        "the config")


def load_trainer_state(path: str | Path) -> dict[str, Any]:
    """Trainer state with `weights_only=True`: a pickle that would run code is refused."""
    f = Path(path) / STATE_FILE
    if not f.is_file():
        raise UserError(f"{f}: missing trainer state")
    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError for unsafe globals, RuntimeError for corruption
        lines = [l.strip() for l in str(err).splitlines() if l.strip()] or [type(err).__name__]
        reason = next((l for l in lines if "Unsupported global" in l or "Unsupported operand" in l), lines[0])
        raise UserError(f"{f}: refused to load trainer state (only tensors and plain values are "
                        f"accepted): {reason[:300]}") from None


def load_pretrained(path: str | Path, device: str | torch.device = "cpu"):
    """(model, tokenizer) from a checkpoint folder or a run's output_dir (its newest valid checkpoint)."""
    ckpt = resolve_checkpoint(path)
    cfg = from_dict(ModelConfig, load_model_config(ckpt), prefix="model.")
    model = MLMModel(cfg)
    state = load_model_weights(ckpt)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not _is_tied(model, k)]
    if missing or unexpected:
        raise UserError(f"{ckpt / MODEL_FILE}: weights do not match {MODEL_CONFIG_FILE} "
                        f"(missing: {missing[:3]}, unexpected: {unexpected[:3]})")
    model.to(device).eval()
    return model, load_tokenizer(ckpt / TOKENIZER_FILE)


def _is_tied(model: torch.nn.Module, key: str) -> bool:
    """A missing key that shares storage with a loaded parameter (tied decoder weight)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    target = params.get(key)
    if target is None:
        return False
    return any(p is target for k, p in params.items() if k != key)


# ---------------------------------------------------------------- Stateful parts of the trainer state

def unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DDP / torch.compile wrappers (saved without key surgery)."""
    while True:
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state_dict as full CPU tensors, also when FSDP2 shards it (a collective then)."""
    return get_model_state_dict(unwrapped(model), options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer state keyed by parameter name, as full CPU tensors (a collective under FSDP2)."""
    return get_optimizer_state_dict(unwrapped(model), optimizer,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                              state: dict[str, Any]) -> None:
    set_optimizer_state_dict(unwrapped(model), optimizer, state, options=StateDictOptions(full_state_dict=True))


def rng_state() -> dict[str, Any]:
    """Python, numpy-legacy, torch (and CUDA) generator states, as plain types and tensors only."""
    np_state = np.random.get_state(legacy=False)  # loadable with weights_only=True
    np_state["state"] = {"key": np_state["state"]["key"].tolist(), "pos": int(np_state["state"]["pos"])}
    state = {"python": random.getstate(), "numpy": np_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    pystate = state["python"]
    random.setstate((pystate[0], tuple(pystate[1]), pystate[2]))
    np_state = dict(state["numpy"])
    np_state["state"] = {"key": np.asarray(np_state["state"]["key"], dtype=np.uint32),
                         "pos": np_state["state"]["pos"]}
    np.random.set_state(np_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
