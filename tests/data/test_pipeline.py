"""mlm.data.pipeline: the tokenizing pass conserves every token, gives the same bytes whatever the
batching, and an interrupted pass resumes to the bytes of an uninterrupted one.

Seams: `pipeline.BATCH_CHARS` (smaller batches, more checkpoints), `pipeline.encode_batch` (the
tokenizer call: fail it to interrupt mid-shard) and `shards.write_progress` (wrap it to interrupt
right after a checkpoint)."""
from __future__ import annotations

import hashlib
import json

import pytest

from mlm.data import pipeline, prepare_data, shards
from mlm.errors import UserError
from tests.data.data_helpers import (check_stream, make_cfg, make_docs, run, shard_bytes, stable,
                                     write_lines)


class Interrupt(Exception):
    pass


def interrupt_after_checkpoint(monkeypatch, when=lambda state: True) -> dict:
    """Make the pass stop (raise Interrupt) right after a checkpoint for which `when(state)` holds."""
    calls = {"checkpoints": 0}
    original = shards.write_progress

    def write_then_maybe_stop(directory, state):
        original(directory, state)
        calls["checkpoints"] += 1
        if when(state):
            raise Interrupt

    monkeypatch.setattr(shards, "write_progress", write_then_maybe_stop)
    return calls


def test_token_conservation_across_shards_and_splits(tmp_path, tok_path, corpus):
    root, docs = corpus
    prepared, _ = run(make_cfg(tmp_path, [root], tok_path, validation_fraction=0.2, shard_blocks=37))
    check_stream(prepared, docs, fraction=0.2)  # every token, in order, only each split's tail dropped
    st = prepared.stats
    assert len(prepared.train.shards) > 3 and len(prepared.validation) > 0
    assert all(e["blocks"] == 37 for e in prepared.train.shards[:-1])
    assert st["blocks"] * 15 == st["tokens"] + st["documents"] - st["dropped_tail_tokens"]
    assert st["blocks"] == len(prepared.train) + len(prepared.validation)
    # index.json records each shard's size and hash
    index = json.loads((prepared.directory / "index.json").read_text())
    for entry in index["splits"]["train"]["shards"]:
        blob = (prepared.directory / entry["file"]).read_bytes()
        assert len(blob) == entry["bytes"] and hashlib.sha256(blob).hexdigest() == entry["sha256"]
    assert (prepared.directory / "tokenizer.json").is_file()


def test_small_batches_give_identical_shards(tmp_path, tok_path, corpus, monkeypatch):
    root, _ = corpus
    p1, _ = run(make_cfg(tmp_path / "1", [root], tok_path, validation_fraction=0.2, shard_blocks=37))
    monkeypatch.setattr(pipeline, "BATCH_CHARS", 500)
    p2, _ = run(make_cfg(tmp_path / "2", [root], tok_path, validation_fraction=0.2, shard_blocks=37))
    assert shard_bytes(p1) == shard_bytes(p2)


def test_determinism_same_input_same_bytes(tmp_path, tok_path, corpus):
    root, docs = corpus
    a, _ = run(make_cfg(tmp_path / "x", [root], tok_path, validation_fraction=0.1, shard_blocks=50))
    b, _ = run(make_cfg(tmp_path / "y", [root], tok_path, validation_fraction=0.1, shard_blocks=50))
    assert a.directory != b.directory
    assert shard_bytes(a) == shard_bytes(b) and len(shard_bytes(a)) > 2
    assert stable(a.stats) == stable(b.stats)


def test_resume_after_an_interruption_mid_shard(tmp_path, tok_path, corpus, monkeypatch):
    root, docs = corpus
    reference, _ = run(make_cfg(tmp_path / "ref", [root], tok_path, validation_fraction=0.2, shard_blocks=37))

    monkeypatch.setattr(pipeline, "BATCH_CHARS", 2000)
    calls = interrupt_after_checkpoint(monkeypatch, when=lambda state: False)  # only counts
    calls["encode"] = 0
    original = pipeline.encode_batch

    def flaky(tok, texts):
        calls["encode"] += 1
        if calls["encode"] == 12:  # after some checkpoints, with partial shards written past the last one
            raise Interrupt
        return original(tok, texts)

    monkeypatch.setattr(pipeline, "encode_batch", flaky)
    cfg = make_cfg(tmp_path / "run", [root], tok_path, validation_fraction=0.2, shard_blocks=37)
    with pytest.raises(Interrupt):
        prepare_data(cfg, log=lambda m: None)
    assert calls["checkpoints"] >= 1
    cache = next((tmp_path / "run" / "run" / "data").glob("blocks-*"))
    progress = json.loads((cache / "progress.json").read_text())
    assert progress["position"] != [0, 0]
    assert not (cache / "index.json").exists()
    assert list(cache.glob("*.bin.tmp")), "a partial shard was being written"

    monkeypatch.setattr(pipeline, "encode_batch", original)
    messages: list[str] = []
    resumed = prepare_data(cfg, log=messages.append)
    assert calls["encode"] < 60  # the resumed run did not start over
    assert resumed.stats["resumed"] is True
    assert any("resuming" in m for m in messages)
    assert shard_bytes(resumed) == shard_bytes(reference)
    assert stable(resumed.stats) == stable(reference.stats)
    assert not (cache / "progress.json").exists() and not list(cache.glob("*.tmp"))
    check_stream(resumed, docs, fraction=0.2)


def test_resume_after_the_first_shard_and_with_warnings_counted_once(tmp_path, tok_path, monkeypatch):
    docs = make_docs(400, seed=5)
    lines = [json.dumps({"text": t}) for t in docs]
    for i in range(0, 400, 40):
        lines[i] = "{broken"
    f = tmp_path / "d.jsonl"
    f.write_text("\n".join(lines) + "\n")
    kept = [t for i, t in enumerate(docs) if i % 40]
    reference, _ = run(make_cfg(tmp_path / "ref", [f], tok_path, shard_blocks=20))

    monkeypatch.setattr(pipeline, "BATCH_CHARS", 1500)
    original = shards.write_progress
    interrupt_after_checkpoint(monkeypatch)
    cfg = make_cfg(tmp_path / "run", [f], tok_path, shard_blocks=20)
    with pytest.raises(Interrupt):
        prepare_data(cfg, log=lambda m: None)
    monkeypatch.setattr(shards, "write_progress", original)
    resumed, _ = run(cfg)
    assert resumed.stats["resumed"] is True
    assert resumed.stats["skipped"] == {"malformed_json": 10}
    assert shard_bytes(resumed) == shard_bytes(reference)
    check_stream(resumed, kept)


def test_resume_with_a_damaged_shard_starts_over(tmp_path, tok_path, corpus, monkeypatch):
    root, docs = corpus
    monkeypatch.setattr(pipeline, "BATCH_CHARS", 2000)
    original = shards.write_progress
    interrupt_after_checkpoint(monkeypatch, when=lambda state: len(state["writers"]["train"]["finished"]) >= 2)
    cfg = make_cfg(tmp_path, [root], tok_path, shard_blocks=37)
    with pytest.raises(Interrupt):
        prepare_data(cfg, log=lambda m: None)
    cache = next((tmp_path / "run" / "data").glob("blocks-*"))
    shard = cache / "train-00000.bin"
    blob = bytearray(shard.read_bytes())
    blob[40] ^= 0xFF  # same size, wrong content: only the hash catches it
    shard.write_bytes(bytes(blob))
    monkeypatch.setattr(shards, "write_progress", original)
    prepared, _ = run(cfg)
    assert prepared.stats["resumed"] is False
    check_stream(prepared, docs)


def test_too_small_corpus_and_empty_validation_are_clear_errors(tmp_path, tok_path):
    f = write_lines(tmp_path / "tiny.txt", ["a few words"])
    with pytest.raises(UserError, match="corpus too small"):
        run(make_cfg(tmp_path, [f], tok_path))
    g = write_lines(tmp_path / "small.txt", make_docs(40, seed=9))
    with pytest.raises(UserError, match="validation split is empty"):
        run(make_cfg(tmp_path / "v", [g], tok_path, validation_fraction=0.001))


def test_a_document_that_tokenizes_to_nothing_is_skipped(tmp_path, tok_path):
    docs = make_docs(30, seed=6)
    f = write_lines(tmp_path / "a.txt", docs[:5] + ["\u200b\u200b"] + docs[5:])  # zero-width: no tokens
    prepared, messages = run(make_cfg(tmp_path, [f], tok_path))
    check_stream(prepared, docs)
    assert prepared.stats["skipped"] == {"no_tokens": 1}
    assert any(f"{f}:6" in m and "no tokens" in m for m in messages)


class DiskFills:
    """Shard files whose writes fail with ENOSPC once `budget` bytes of shards have been written."""

    def __init__(self, budget: int):
        self.left = budget

    def open(self, path, mode="r", *args, **kwargs):
        handle = open(path, mode, *args, **kwargs)
        if str(path).endswith(".bin.tmp") and mode in ("wb", "ab"):
            return _FillingFile(handle, self)
        return handle


class _FillingFile:
    def __init__(self, handle, disk: DiskFills):
        self.handle, self.disk = handle, disk

    def write(self, data) -> int:
        size = memoryview(data).nbytes
        if size > self.disk.left:
            import errno
            self.handle.write(memoryview(data).cast("B")[: self.disk.left])  # a part makes it to disk
            self.disk.left = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self.disk.left -= size
        return self.handle.write(data)

    def __getattr__(self, name):
        return getattr(self.handle, name)


def test_a_full_disk_while_writing_shards_is_one_line_and_the_same_command_resumes(tmp_path, tok_path, corpus,
                                                                                    monkeypatch):
    from mlm.storage import StorageError

    root, docs = corpus
    reference, _ = run(make_cfg(tmp_path / "ref", [root], tok_path, validation_fraction=0.2, shard_blocks=37))
    monkeypatch.setattr(pipeline, "BATCH_CHARS", 2000)
    monkeypatch.setattr(shards, "open", DiskFills(budget=37 * 16 * 2 * 5 + 300).open, raising=False)
    cfg = make_cfg(tmp_path / "run", [root], tok_path, validation_fraction=0.2, shard_blocks=37)
    with pytest.raises(StorageError) as caught:
        prepare_data(cfg, log=lambda m: None)
    message = str(caught.value)
    assert "\n" not in message and "cannot write the data cache" in message and "No space left on device" in message
    assert "free" in message and "resume" in message
    cache = next((tmp_path / "run" / "run" / "data").glob("blocks-*"))
    progress = json.loads((cache / "progress.json").read_text())
    recorded = {f"{name}-{len(w['finished']):05d}.bin.tmp": w["partial_blocks"] * 16 * 2
                for name, w in progress["writers"].items()}
    for tmp in cache.glob("*.tmp"):  # what the failed write added after the last checkpoint is gone
        assert tmp.name in recorded and tmp.stat().st_size == recorded[tmp.name]

    monkeypatch.setattr(shards, "open", open, raising=False)  # space freed
    resumed = prepare_data(cfg, log=lambda m: None)
    assert resumed.stats["resumed"] is True
    assert shard_bytes(resumed) == shard_bytes(reference)
    check_stream(resumed, docs, fraction=0.2)


def test_leftover_temporary_files_of_a_killed_prepare_are_removed_with_a_note(tmp_path, tok_path, corpus):
    root, _ = corpus
    cfg = make_cfg(tmp_path / "run", [root], tok_path, validation_fraction=0.2)
    cache = tmp_path / "run" / "run" / "data"
    (cache / "tokenizers").mkdir(parents=True)
    (cache / "tokenizers" / "metaspace_bpe-300-abc.json.tmp").write_text("{half")
    messages: list[str] = []
    prepare_data(cfg, log=messages.append)
    assert not list((cache / "tokenizers").glob("*.tmp"))
    assert any("removed" in m and "metaspace_bpe-300-abc.json.tmp" in m for m in messages)
