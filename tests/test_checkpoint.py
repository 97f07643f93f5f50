"""Checkpoint folders: atomic, verified against their manifest, never unpickled unsafely."""
import os
import pickle
import warnings

import pytest
import torch

from mlm import checkpoint as ck
from mlm.errors import UserError


def _save(root, step, keep=0, value=1.0):
    state = {"w": torch.full((4, 4), value), "b": torch.zeros(4)}
    contents = ck.CheckpointContents(state, {"hidden_size": 4}, '{"tok": 1}', "a: 1\n",
                                     {"step": step, "optimizer": {"state": {}, "param_groups": []}})
    return ck.save_checkpoint(root, step, contents, keep=keep)


def test_save_writes_every_part_and_a_manifest(tmp_path):
    path = _save(tmp_path, 5)
    assert path.name == "step_5"
    names = {p.name for p in path.iterdir()}
    assert names == {ck.MODEL_FILE, ck.MODEL_CONFIG_FILE, ck.TOKENIZER_FILE, ck.RUN_CONFIG_FILE,
                     ck.STATE_FILE, ck.MANIFEST_FILE}
    assert ck.verify_checkpoint(path) is None
    assert torch.equal(ck.load_model_weights(path)["w"], torch.ones(4, 4))
    assert ck.load_trainer_state(path)["step"] == 5
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_keep_prunes_oldest(tmp_path):
    for step in (1, 2, 3, 4):
        _save(tmp_path, step, keep=2)
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["step_3", "step_4"]


def test_truncated_weights_fall_back_to_previous_with_warning(tmp_path):
    _save(tmp_path, 1)
    newest = _save(tmp_path, 2)
    weights = newest / ck.MODEL_FILE
    with open(weights, "r+b") as fh:
        fh.truncate(weights.stat().st_size // 2)
    with pytest.warns(UserWarning, match=r"skipping checkpoint .*step_2.*truncated"):
        assert ck.latest_checkpoint(tmp_path).name == "step_1"


def test_corrupted_bytes_are_detected(tmp_path):
    path = _save(tmp_path, 1)
    data = bytearray((path / ck.MODEL_CONFIG_FILE).read_bytes())
    data[2] ^= 0xFF
    (path / ck.MODEL_CONFIG_FILE).write_bytes(bytes(data))
    assert "SHA-256" in ck.verify_checkpoint(path)


def test_half_written_save_is_invisible(tmp_path):
    _save(tmp_path, 1)
    partial = tmp_path / ".tmp_step_2_999"
    partial.mkdir()
    (partial / ck.MODEL_FILE).write_bytes(b"garbage")
    step_2_without_manifest = tmp_path / "step_3"
    step_2_without_manifest.mkdir()
    (step_2_without_manifest / ck.MODEL_FILE).write_bytes(b"garbage")
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        assert ck.latest_checkpoint(tmp_path).name == "step_1"


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_CHECKPOINT",))


def test_pickled_code_in_trainer_state_is_refused_and_not_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _save(tmp_path, 1)
    with open(path / ck.STATE_FILE, "wb") as fh:
        pickle.dump({"step": 1, "evil": _RunsCode()}, fh)
    torch.save({"step": 1, "evil": _RunsCode()}, path / ck.STATE_FILE)
    with pytest.raises(UserError, match="refused to load trainer state"):
        ck.load_trainer_state(path)
    assert not (tmp_path / "PWNED_BY_CHECKPOINT").exists()


def test_resolve_accepts_run_dir_and_names_problems(tmp_path):
    run = tmp_path / "run"
    _save(run / "checkpoints", 3)
    _save(run / "checkpoints", 7)
    assert ck.resolve_checkpoint(run).name == "step_7"
    with pytest.raises(UserError, match="checkpoint not found"):
        ck.resolve_checkpoint(tmp_path / "missing")
    with pytest.raises(UserError, match="no valid checkpoint"):
        ck.resolve_checkpoint(tmp_path)
    (run / "checkpoints" / "step_7" / ck.TOKENIZER_FILE).unlink()
    with pytest.raises(UserError, match=r"broken checkpoint: .*tokenizer.json is missing"):
        ck.resolve_checkpoint(run / "checkpoints" / "step_7")


def test_extra_files_are_written_and_covered_by_the_manifest(tmp_path):
    contents = ck.CheckpointContents({"w": torch.ones(2)}, {"hidden_size": 2}, "{}", "a: 1\n",
                                     extra_tensors={"head.safetensors": {"weight": torch.full((3,), 2.0)}},
                                     extra_json={"head.json": {"labels": ["a", "b"]}})
    path = ck.save_checkpoint(tmp_path, 1, contents)
    assert ck.verify_checkpoint(path) is None
    assert torch.equal(ck.load_model_weights(path, "head.safetensors")["weight"], torch.full((3,), 2.0))
    (path / "head.json").write_text('{"labels": ["x"]}')
    assert "head.json" in ck.verify_checkpoint(path)


def test_resume_accepts_checkpoints_older_than_the_init_only_keys(tmp_path):
    """A checkpoint written before model.init_std / model.scaled_residual_init existed still
    resumes (they only shape step 0's weights); any other missing or changed key refuses."""
    import json
    from dataclasses import asdict

    from mlm.model import ModelConfig

    now = asdict(ModelConfig(vocab_size=100, special_token_ids=[0, 1, 2, 3, 4]))
    old = {k: v for k, v in now.items() if k not in ("init_std", "scaled_residual_init")}
    (tmp_path / ck.MODEL_CONFIG_FILE).write_text(json.dumps(old))
    ck.check_resumable(tmp_path, now)
    (tmp_path / ck.MODEL_CONFIG_FILE).write_text(json.dumps({k: v for k, v in old.items() if k != "rope_theta"}))
    with pytest.raises(UserError, match=r"model.rope_theta: checkpoint has None"):
        ck.check_resumable(tmp_path, now)


def test_keep_counts_only_verified_checkpoints_and_never_deletes_a_broken_one(tmp_path):
    _save(tmp_path, 1)
    broken = _save(tmp_path, 2)
    (broken / ck.MODEL_CONFIG_FILE).write_text("{}")
    for step in (3, 4):
        _save(tmp_path, step, keep=2)
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["step_2", "step_3", "step_4"]
    assert (broken / ck.MODEL_CONFIG_FILE).read_text() == "{}"


def test_resume_point_sets_newer_broken_checkpoints_aside_and_resumes_from_the_newest_good(tmp_path):
    _save(tmp_path, 1)
    broken = _save(tmp_path, 2)
    (broken / ck.MODEL_FILE).write_bytes(b"x")
    with pytest.warns(UserWarning, match=r"step_2 .* moved to .*rejected"):
        assert ck.resume_point(tmp_path, reject_unverified=False).name == "step_1"
    assert (tmp_path / ck.REJECTED_DIR / "step_2" / ck.MODEL_FILE).read_bytes() == b"x"
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["step_1"]


def test_resume_point_refuses_when_nothing_verifies_unless_told_to_set_them_aside(tmp_path):
    broken = _save(tmp_path, 3)
    (broken / ck.MODEL_FILE).write_bytes(b"x")
    with pytest.raises(UserError, match=r"no checkpoint verifies \(step_3; .*reject_unverified"):
        ck.resume_point(tmp_path, reject_unverified=False)
    assert (broken / ck.MODEL_FILE).read_bytes() == b"x"
    assert ck.resume_point(tmp_path, reject_unverified=True) is None
    assert (tmp_path / ck.REJECTED_DIR / "step_3").is_dir() and not broken.exists()


def test_resaving_a_step_over_a_broken_folder_moves_the_broken_one_aside(tmp_path):
    broken = _save(tmp_path, 5)
    (broken / ck.MODEL_FILE).write_bytes(b"x")
    _save(tmp_path, 5, value=2.0)
    assert ck.verify_checkpoint(tmp_path / "step_5") is None
    assert (tmp_path / ck.REJECTED_DIR / "step_5" / ck.MODEL_FILE).read_bytes() == b"x"


def _write_then_fail_with(error):
    def fake_save_file(tensors, path, metadata=None):
        with open(path, "wb") as fh:
            fh.write(b"partial")  # part of the file made it to disk
        raise error
    return fake_save_file


@pytest.mark.parametrize("error", [
    OSError(28, "No space left on device"),
    RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1088 vs 1024"),
])
def test_a_save_that_hits_a_full_disk_keeps_the_previous_checkpoint_and_leaves_no_temporary(tmp_path, monkeypatch,
                                                                                             error):
    from mlm.storage import StorageError

    _save(tmp_path, 1)
    monkeypatch.setattr(ck, "save_file", _write_then_fail_with(error))
    with pytest.raises(StorageError) as caught:
        _save(tmp_path, 2)
    message = str(caught.value)
    assert "\n" not in message and "checkpoint step_2" in message and "No space left on device" in message
    assert "free on that filesystem" in message and "newest intact checkpoint is" in message
    assert "step_1" in message and "checkpoint.keep" in message and "output_dir" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_1"]
    assert ck.verify_checkpoint(tmp_path / "step_1") is None


def test_a_bug_in_saving_is_not_dressed_up_as_a_full_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(ck, "save_file", _write_then_fail_with(TypeError("not a tensor")))
    with pytest.raises(TypeError):
        _save(tmp_path, 1)
    assert not list(tmp_path.iterdir())
