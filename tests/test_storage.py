"""mlm.storage: a full disk or a read-only folder ends in one line, and no temporary file is left."""
from __future__ import annotations

import errno

import pytest

import mlm.storage
from mlm.storage import (StorageError, append_text, format_bytes, remove_leftovers, require_writable,
                         write_text_atomic)


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_names_what_where_how_much_and_what_to_do(tmp_path):
    err = StorageError.from_os_error(OSError(errno.ENOSPC, "No space left on device"), "checkpoint step_20",
                                     tmp_path / "checkpoints", needed=64_000_000)
    text = str(err)
    assert "\n" not in text and "checkpoint step_20" in text and str(tmp_path) in text
    assert "No space left on device" in text and "64.0 MB" in text and "free" in text and "Free some space" in text


def test_an_atomic_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    target.write_text("old")
    monkeypatch.setattr(mlm.storage.os, "replace", no_space)
    with pytest.raises(StorageError, match="cannot write the metrics"):
        write_text_atomic(target, "new", what="the metrics")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_append_failures_are_one_line(tmp_path):
    with pytest.raises(StorageError, match="cannot write metrics to"):
        append_text(tmp_path / "missing" / "metrics.jsonl", "x\n", what="metrics")


def test_a_folder_that_cannot_be_written_is_refused(tmp_path, monkeypatch):
    require_writable(tmp_path / "new", "run output")
    assert (tmp_path / "new").is_dir() and not list((tmp_path / "new").iterdir())
    monkeypatch.setattr(mlm.storage, "open", lambda *a, **k: (_ for _ in ()).throw(
        OSError(errno.EROFS, "Read-only file system")), raising=False)
    with pytest.raises(StorageError, match=r"cannot write the run output there \(Read-only file system\)"):
        require_writable(tmp_path / "new", "run output")


def test_leftovers_of_a_killed_write_are_removed_and_named(tmp_path):
    (tmp_path / ".tmp_step_7_999").mkdir()
    (tmp_path / ".tmp_step_7_999" / "model.safetensors").write_bytes(b"half")
    (tmp_path / ".tmp_config.yaml.123").write_text("x")
    (tmp_path / "step_5").mkdir()
    removed = remove_leftovers(tmp_path)
    assert sorted(p.name for p in removed) == [".tmp_config.yaml.123", ".tmp_step_7_999"]
    assert [p.name for p in tmp_path.iterdir()] == ["step_5"]


def test_sizes_read_like_a_person_writes_them():
    assert format_bytes(512) == "512 B" and format_bytes(64_700_000) == "64.7 MB" and format_bytes(3e9) == "3.0 GB"
