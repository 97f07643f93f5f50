"""The training loop: loss goes down, resume is exact (even after kill -9), accumulation and
data parallelism give the batch-32 gradient, non-finite steps are skipped, bad input fails
in one line."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import mlm.train
from helpers import REPO, tiny_overrides
from mlm import checkpoint as ck
from mlm.config import load_config
from mlm.errors import UserError
from mlm.loop import masked_lm_loss, train_step
from mlm.train import train


def _metrics(out: Path) -> list[dict]:
    return [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if l.strip()]


def _train_losses(out: Path) -> dict[int, float]:
    return {m["step"]: m["train_loss"] for m in _metrics(out) if "train_loss" in m and m["train_loss"] is not None}


def _cli(args: list[str], **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "mlm.train", *args], capture_output=True, text=True,
                          cwd=str(REPO), env=env, **kw)


@pytest.fixture(scope="module")
def reference_run(corpus_file, data_cache, tmp_path_factory):
    """An uninterrupted 20-step run that the resume tests compare against."""
    out = tmp_path_factory.mktemp("reference")
    cfg = load_config(None, tiny_overrides(corpus_file, data_cache, out))
    final = train(cfg)
    return out, final


def test_tiny_run_learns_and_writes_everything(reference_run):
    out, final = reference_run
    losses = _train_losses(out)
    assert sorted(losses) == list(range(1, 21))
    first, last = np.mean([losses[s] for s in (1, 2, 3)]), np.mean([losses[s] for s in (18, 19, 20)])
    assert last < first - 0.5, (first, last)
    evals = [m for m in _metrics(out) if "eval_loss" in m]
    assert [m["step"] for m in evals] == [10, 20]
    assert 0.0 <= final["eval_accuracy"] <= 1.0 and final["eval_perplexity"] > 1.0
    assert (out / "config.yaml").is_file()
    assert [p.name for p in ck.list_checkpoints(out / "checkpoints")] == ["step_5", "step_10", "step_15", "step_20"]


def test_load_pretrained_returns_working_model_and_tokenizer(reference_run):
    import mlm
    out, _ = reference_run
    model, tok = mlm.load_pretrained(out)
    ids = torch.tensor([tok.encode("the function returns a value").ids])
    logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], tok.get_vocab_size())


def _popen(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "mlm.train", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, cwd=str(REPO), env=env)


def test_resume_after_sigkill_is_bit_exact(reference_run, corpus_file, data_cache, tmp_path):
    ref_out, _ = reference_run
    out = tmp_path / "killed"
    # The lr schedule is constant, so a run told to go on "forever" takes the reference's
    # first steps exactly; kill it right after its step-4 checkpoint, mid-flight.
    endless = tiny_overrides(corpus_file, data_cache, out, **{"train.max_steps": 100000, "checkpoint.every": 2})
    proc = _popen(endless)
    deadline = time.time() + 120
    while not (out / "checkpoints" / "step_4").is_dir():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    newest = ck.list_checkpoints(out / "checkpoints")[-1]
    assert int(newest.name.split("_")[1]) < 20, "killed too late to test anything"
    resumed = _cli(tiny_overrides(corpus_file, data_cache, out, **{"checkpoint.every": 2}))
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr
    assert _train_losses(out) == _train_losses(ref_out)  # bit-exact on CPU, every step


def test_sigterm_saves_and_exits_cleanly(corpus_file, data_cache, tmp_path):
    out = tmp_path / "term"
    proc = _popen(tiny_overrides(corpus_file, data_cache, out, **{"train.max_steps": 100000,
                                                                "checkpoint.every": 0, "eval.every": 0}))
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").is_file() or len(_train_losses(out)) < 3:
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    saved = ck.list_checkpoints(out / "checkpoints")
    assert len(saved) == 1 and int(saved[0].name.split("_")[1]) >= 3
    assert '"stopped": "SIGTERM"' in err.decode()


def test_resume_refuses_changed_model(reference_run, corpus_file, data_cache, tmp_path):
    import shutil
    ref_out, _ = reference_run
    out = tmp_path / "changed"
    shutil.copytree(ref_out, out)
    cfg = load_config(None, tiny_overrides(corpus_file, data_cache, out, **{"model.num_layers": 3,
                                                                          "train.max_steps": 30}))
    with pytest.raises(UserError, match=r"cannot resume, the model config changed \(model.num_layers: "
                                        r"checkpoint has 2, config now has 3\)"):
        train(cfg)


def poisoned_steps(steps: set[int]):
    """A stand-in for the trainer's step whose loss is NaN on the given (0-based) calls."""
    calls = iter(range(10**9))

    def step(*args, **kwargs):
        if next(calls) in steps:
            kwargs["loss_fn"] = lambda model, batch: masked_lm_loss(model, batch) * float("nan")
        return train_step(*args, **kwargs)
    return step


def test_non_finite_step_is_skipped_and_training_continues(corpus_file, data_cache, tmp_path, capsys, monkeypatch):
    cfg = load_config(None, tiny_overrides(corpus_file, data_cache, tmp_path / "nan",
                                           **{"train.max_steps": 8, "checkpoint.every": 0}))
    monkeypatch.setattr(mlm.train, "train_step", poisoned_steps({3}))
    final = train(cfg)
    events = _metrics(tmp_path / "nan")
    assert {"step": 4, "skipped": True, "train_loss": None} in events
    assert "step 4: non-finite loss or gradient" in capsys.readouterr().err
    assert final["step"] == 8 and np.isfinite(final["train_loss"])
    model, _ = __import__("mlm").load_pretrained(tmp_path / "nan")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_too_many_bad_steps_stop_with_a_clear_message(corpus_file, data_cache, tmp_path, monkeypatch):
    cfg = load_config(None, tiny_overrides(corpus_file, data_cache, tmp_path / "bad",
                                           **{"train.max_steps": 8, "train.max_bad_steps": 2}))
    monkeypatch.setattr(mlm.train, "train_step", poisoned_steps({2, 3}))
    with pytest.raises(UserError, match="2 consecutive non-finite steps"):
        train(cfg)


@pytest.mark.parametrize("files, message", [
    (["/nonexistent/corpus.txt"], "/nonexistent/corpus.txt"),
    (["EMPTY"], "no usable text"),
])
def test_bad_data_is_one_line_and_nonzero(files, message, tmp_path):
    if files == ["EMPTY"]:
        empty = tmp_path / "empty.txt"
        empty.write_text("\n\n   \n")
        files = [str(empty)]
    proc = _cli(["--config", "configs/base.yaml", f"output_dir={tmp_path / 'out'}",
                 f"data.train_files=[{files[0]}]", "log.progress=false"])
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert message in proc.stderr.strip().splitlines()[-1]


def test_torchrun_two_ranks_matches_single_process_and_resumes(reference_run, corpus_file, data_cache, tmp_path):
    ref_out, _ = reference_run
    out = tmp_path / "ddp"
    args = tiny_overrides(corpus_file, data_cache, out, **{"train.max_steps": 10})
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "mlm.train"]
    # Same global batch (16) as the reference; each rank takes 8 rows. Stop at 10 steps, then resume to 20.
    first = subprocess.run(cmd + args, capture_output=True, text=True, cwd=str(REPO), env=env, timeout=240)
    assert first.returncode == 0, first.stderr[-3000:]
    second = subprocess.run(cmd + tiny_overrides(corpus_file, data_cache, out), capture_output=True, text=True,
                            cwd=str(REPO), env=env, timeout=240)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming from" in second.stderr
    ddp, ref = _train_losses(out), _train_losses(ref_out)
    assert sorted(ddp) == sorted(ref)
    # Same blocks and masks on every step; only the float reduction order differs.
    for step in ref:
        assert ddp[step] == pytest.approx(ref[step], abs=1e-4), step


def test_torchrun_fsdp2_trains_like_single_process(reference_run, corpus_file, data_cache, tmp_path):
    ref_out, _ = reference_run
    out = tmp_path / "fsdp"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29534",
           "-m", "mlm.train", *tiny_overrides(corpus_file, data_cache, out, **{"train.max_steps": 6,
                                                                             "train.fsdp": True})]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(REPO), env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    fsdp, ref = _train_losses(out), _train_losses(ref_out)
    assert sorted(fsdp) == list(range(1, 7))
    for step in fsdp:
        assert fsdp[step] == pytest.approx(ref[step], abs=1e-4), step
    assert ck.latest_checkpoint(out / "checkpoints").name == "step_6"


def test_max_time_stops_cleanly_with_a_checkpoint(corpus_file, data_cache, tmp_path):
    out = tmp_path / "timed"
    cfg = load_config(None, tiny_overrides(corpus_file, data_cache, out, **{
        "train.max_steps": 100000, "train.max_time": 1.0, "checkpoint.every": 0, "eval.every": 0}))
    final = train(cfg)
    assert final["stopped"] == "max_time"
    assert 0 < final["step"] < 100000
    assert ck.latest_checkpoint(out / "checkpoints").name == f"step_{final['step']}"


def test_fp16_with_gradient_scaler_trains(corpus_file, data_cache, tmp_path):
    out = tmp_path / "fp16"
    cfg = load_config(None, tiny_overrides(corpus_file, data_cache, out, **{
        "train.max_steps": 6, "train.precision": "fp16", "checkpoint.every": 3}))
    final = train(cfg)
    assert final["step"] == 6 and np.isfinite(final["train_loss"])
    assert "scaler" in ck.load_trainer_state(ck.latest_checkpoint(out / "checkpoints"))


def test_plot_draws_the_curves(reference_run, tmp_path):
    pytest.importorskip("matplotlib")
    from mlm.plot import main as plot_main
    out, _ = reference_run
    png = tmp_path / "curves.png"
    assert plot_main([str(out), "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"




# ---------------------------------------------------------------- same command, same result; a log to follow


def _fresh_process_run(corpus_file, out, cache, **extra) -> subprocess.CompletedProcess:
    """A tiny run in a fresh process with its own cache: the tokenizer is trained in that process."""
    overrides = tiny_overrides(corpus_file, cache, out, **{"checkpoint.every": 0, "eval.every": 0, **extra})
    return _cli(overrides)


def test_two_fresh_runs_in_two_folders_give_identical_losses(corpus_file, tmp_path):
    runs = [tmp_path / "a", tmp_path / "b"]
    for out in runs:
        proc = _fresh_process_run(corpus_file, out, out / "cache", **{"train.max_steps": 8})
        assert proc.returncode == 0, proc.stderr
    tokenizers = [next((out / "cache" / "tokenizers").glob("*.json")).read_bytes() for out in runs]
    assert tokenizers[0] == tokenizers[1]
    assert _train_losses(runs[0]) == _train_losses(runs[1]) and len(_train_losses(runs[0])) == 8


def test_output_to_a_file_gets_plain_progress_lines(corpus_file, data_cache, tmp_path):
    log = tmp_path / "train.log"
    with open(log, "w") as stderr:
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        args = tiny_overrides(corpus_file, data_cache, tmp_path / "run", **{"log.progress": True,
                                                                           "checkpoint.every": 10})
        subprocess.run([sys.executable, "-m", "mlm.train", *args], stderr=stderr, stdout=subprocess.DEVNULL,
                       cwd=str(REPO), env=env, check=True)
    lines = log.read_text().splitlines()
    steps = [line for line in lines if line.startswith("step ") and " loss " in line and "tok/s" in line]
    assert steps[0].startswith("step 1/20") and steps[-1].startswith("step 20/20") and "eta" in steps[-1]
    assert any("eval loss" in line and "accuracy" in line and "±" in line for line in lines)
    assert any("saved" in line and "step_10" in line for line in lines)
    assert not any("\r" in line for line in lines)  # no bar redraws in a log file


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_run_whose_only_checkpoint_is_corrupt_stops_and_changes_nothing(reference_run, corpus_file, data_cache,
                                                                            tmp_path):
    import shutil
    ref_out, _ = reference_run
    out = tmp_path / "corrupt"
    (out / "checkpoints").mkdir(parents=True)
    shutil.copytree(ref_out / "checkpoints" / "step_20", out / "checkpoints" / "step_20")
    state = out / "checkpoints" / "step_20" / ck.STATE_FILE
    state.write_bytes(state.read_bytes()[:1000])  # truncated
    before = _tree(out)
    proc = _cli(tiny_overrides(corpus_file, data_cache, out, **{"train.max_steps": 30}))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "step_20" in last and "checkpoint.reject_unverified" in last and "new output_dir" in last
    assert _tree(out) == before


def test_reject_unverified_moves_the_corrupt_checkpoint_aside_and_starts_over(reference_run, corpus_file,
                                                                               data_cache, tmp_path):
    import shutil
    ref_out, _ = reference_run
    out = tmp_path / "corrupt"
    shutil.copytree(ref_out / "checkpoints" / "step_5", out / "checkpoints" / "step_5")
    (out / "checkpoints" / "step_5" / ck.MODEL_FILE).write_bytes(b"broken")
    cfg = load_config(None, tiny_overrides(corpus_file, data_cache, out, **{"train.max_steps": 6,
                                                                          "checkpoint.reject_unverified": True}))
    final = train(cfg)
    assert final["step"] == 6
    assert (out / "checkpoints" / "rejected" / "step_5" / ck.MODEL_FILE).read_bytes() == b"broken"
    assert _train_losses(out)[1] == _train_losses(ref_out)[1]  # started from step 0


# ---------------------------------------------------------------- budgets and schedules


def test_a_budget_run_ends_annealed_and_a_resumed_one_continues_on_the_same_curve(corpus_file, data_cache,
                                                                                   tmp_path):
    from mlm.optim import lr_at_fraction

    out = tmp_path / "budget"
    common = {"train.max_steps": 10**6, "train.budget_minutes": 0.08, "train.schedule": "cosine",
              "train.warmup_fraction": 0.1, "checkpoint.every": 0, "eval.every": 0}
    first = train(load_config(None, tiny_overrides(corpus_file, data_cache, out, **{**common, "train.max_time": 1.5})))
    assert first["stopped"] == "max_time"
    saved = ck.load_trainer_state(ck.latest_checkpoint(out / "checkpoints"))["elapsed_seconds"]
    assert 1.5 <= saved < 4.8
    final = train(load_config(None, tiny_overrides(corpus_file, data_cache, out, **common)))
    assert final["stopped"] == "budget" and final["step"] > first["step"]
    events = [m for m in _metrics(out) if "budget_fraction" in m]
    fractions = [m["budget_fraction"] for m in events]
    assert fractions == sorted(fractions) and fractions[-1] > 0.9  # one curve across the two sessions
    resumed = [m for m in events if m["step"] > first["step"]]
    assert resumed[0]["budget_fraction"] >= saved / 4.8 - 1e-9
    for m in events:  # every step's lr is the schedule at its share of the budget
        assert m["lr"] == pytest.approx(lr_at_fraction(m["budget_fraction"], 3e-3, 0.1, "cosine", 0.1))
    assert events[-1]["lr"] < 3e-4 + 0.05 * 3e-3  # annealed to (nearly) the floor


def test_a_mask_rate_schedule_resumes_exactly(reference_run, corpus_file, data_cache, tmp_path):
    import shutil
    schedule = {"collate.mlm_probability": 0.4, "collate.schedule.kind": "steps",
                "collate.schedule.steps": "[[0, 0.4], [0.5, 0.15]]", "checkpoint.every": 10}
    whole = tmp_path / "whole"
    train(load_config(None, tiny_overrides(corpus_file, data_cache, whole, **schedule)))
    rates = {m["step"]: m["mlm_probability"] for m in _metrics(whole) if "mlm_probability" in m}
    assert rates[9] == 0.4 and rates[11] == 0.15  # the step's rate, logged after it
    resumed = tmp_path / "resumed"
    shutil.copytree(whole / "checkpoints" / "step_10", resumed / "checkpoints" / "step_10")
    train(load_config(None, tiny_overrides(corpus_file, data_cache, resumed, **schedule)))
    assert _train_losses(resumed) == {s: v for s, v in _train_losses(whole).items() if s > 10}


# ---------------------------------------------------------------- a full disk, a read-only folder, leftovers


def test_a_full_disk_mid_run_is_one_line_keeps_the_last_checkpoint_and_the_same_command_recovers(
        reference_run, corpus_file, data_cache, tmp_path, monkeypatch, capsys):
    from mlm.errors import run_cli

    ref_out, _ = reference_run
    out = tmp_path / "full"
    argv = tiny_overrides(corpus_file, data_cache, out)
    real_save_file, calls = ck.save_file, []

    def disk_fills_on_the_second_save(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_save_file(tensors, path, metadata=metadata)

    monkeypatch.setattr(ck, "save_file", disk_fills_on_the_second_save)
    with pytest.raises(SystemExit) as exit_:
        run_cli(mlm.train.main, argv)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_.value.code == 2 and err.startswith("error: cannot write checkpoint step_10")
    assert "No space left on device" in err and "step_5" in err
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_5"]
    monkeypatch.setattr(ck, "save_file", real_save_file)  # space freed
    final = train(load_config(None, argv))
    assert final["step"] == 20
    assert _train_losses(out) == _train_losses(ref_out)


def test_leftovers_of_a_killed_save_are_removed_at_start(reference_run, corpus_file, data_cache, tmp_path, capsys):
    import shutil
    ref_out, _ = reference_run
    out = tmp_path / "leftover"
    shutil.copytree(ref_out / "checkpoints" / "step_15", out / "checkpoints" / "step_15")
    (out / "checkpoints" / ".tmp_step_20_4242").mkdir()
    (out / "checkpoints" / ".tmp_step_20_4242" / ck.MODEL_FILE).write_bytes(b"half a file")
    train(load_config(None, tiny_overrides(corpus_file, data_cache, out)))
    assert "removed" in capsys.readouterr().err and ".tmp_step_20_4242" not in os.listdir(out / "checkpoints")
    assert ck.latest_checkpoint(out / "checkpoints").name == "step_20"


def test_a_read_only_output_folder_is_refused_before_any_work(corpus_file, tmp_path, monkeypatch):
    import errno

    import mlm.storage
    cache = tmp_path / "cache"
    monkeypatch.setattr(mlm.storage, "open", lambda *a, **k: (_ for _ in ()).throw(
        OSError(errno.EROFS, "Read-only file system")), raising=False)
    cfg = load_config(None, tiny_overrides(corpus_file, cache, tmp_path / "ro"))
    with pytest.raises(UserError, match=r"ro: cannot write the run output there \(Read-only file system\)"):
        train(cfg)
    assert not cache.exists()  # no data was prepared


def test_a_metrics_write_that_fails_stops_the_run_with_one_line(corpus_file, data_cache, tmp_path, monkeypatch):
    import mlm.reporting
    from mlm.storage import StorageError

    real, calls = mlm.reporting.append_text, []

    def disk_fills(path, text, what):
        calls.append(path)
        if len(calls) > 3:
            raise StorageError(f"cannot write {what} to {path}: No space left on device")
        return real(path, text, what)

    monkeypatch.setattr(mlm.reporting, "append_text", disk_fills)
    cfg = load_config(None, tiny_overrides(corpus_file, data_cache, tmp_path / "m"))
    with pytest.raises(StorageError, match="cannot write metrics"):
        train(cfg)


def test_under_torchrun_every_rank_leaves_with_the_same_error_and_none_hangs(corpus_file, data_cache, tmp_path):
    out = tmp_path / "ddp_fault"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    args = tiny_overrides(corpus_file, data_cache, out, **{"train.max_steps": 100000, "checkpoint.every": 100,
                                                           "eval.every": 0, "train.log_every": 50})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29535",
           "-m", "mlm.train", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=str(REPO), env=env)
    deadline = time.time() + 120
    while 50 not in (_train_losses(out) if (out / "metrics.jsonl").is_file() else {}):
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-2000:]
        time.sleep(0.01)
    (out / "checkpoints").write_text("not a folder")  # before the first save (step 100): it cannot write there
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    message = f"error: cannot write checkpoints to {out / 'checkpoints'}"
    assert err.count(message) == 2, err[-3000:]  # the same line from each rank (they may interleave)
    # torchrun's report: the first rank out exits with the user-error code; torchrun may then stop the
    # other (SIGTERM) while it tears down, after it has printed the same line.
    assert "exitcode  : 2" in err
    assert 'mlm/' not in "".join(l for l in err.splitlines() if l.strip().startswith("File "))  # no trace of ours
