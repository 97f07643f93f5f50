"""mlm.data.shards: blocks written into shards atomically, and a writer that continues from its
recorded state only when the finished shards verify."""
from __future__ import annotations

import hashlib
import json

import numpy as np

from mlm.data.shards import SplitWriter, load_complete_index, read_json, write_json


def writer(tmp_path, shard_blocks: int = 2) -> SplitWriter:
    return SplitWriter(tmp_path, "train", seq_len=4, dtype=np.dtype("<u2"), shard_blocks=shard_blocks, cls_id=2)


def test_blocks_are_cls_then_the_stream_and_full_shards_are_renamed_into_place(tmp_path):
    w = writer(tmp_path)
    w.add(np.arange(10, 24, dtype=np.uint16))  # 14 tokens: 4 blocks of 3, 2 left over
    assert [e["file"] for e in w.finished] == ["train-00000.bin", "train-00001.bin"]
    assert not list(tmp_path.glob("*.tmp")) and w.leftover.tolist() == [22, 23]
    blocks = np.fromfile(tmp_path / "train-00000.bin", dtype="<u2").reshape(-1, 4)
    assert blocks.tolist() == [[2, 10, 11, 12], [2, 13, 14, 15]]
    entry = w.finished[0]
    assert entry["sha256"] == hashlib.sha256((tmp_path / entry["file"]).read_bytes()).hexdigest()
    assert entry["bytes"] == 16 and entry["blocks"] == 2


def test_restore_continues_a_partial_shard_and_refuses_a_damaged_one(tmp_path):
    w = writer(tmp_path, shard_blocks=4)
    w.add(np.arange(10, 25, dtype=np.uint16))  # 5 blocks: one shard of 4, a partial shard of 1
    state = json.loads(json.dumps(w.state()))  # as progress.json records it
    w.add(np.arange(100, 103, dtype=np.uint16))  # written after the checkpoint: written again on resume
    w.abandon()
    again = writer(tmp_path, shard_blocks=4)
    assert again.restore(state) and again.blocks == 5
    again.add(np.arange(100, 103, dtype=np.uint16))
    again.close()
    assert again.finished[1]["sha256"] == hashlib.sha256((tmp_path / "train-00001.bin").read_bytes()).hexdigest()
    assert np.fromfile(tmp_path / "train-00001.bin", dtype="<u2").reshape(-1, 4)[-1].tolist() == [2, 100, 101, 102]
    (tmp_path / "train-00000.bin").write_bytes(b"\x00" * state["finished"][0]["bytes"])  # same size, other bytes
    assert not writer(tmp_path, shard_blocks=4).restore(state)


def test_json_files_are_written_atomically_and_a_bad_index_is_not_complete(tmp_path):
    write_json(tmp_path / "index.json", {"key": "k", "complete": False})
    assert read_json(tmp_path / "index.json") == {"key": "k", "complete": False}
    assert not list(tmp_path.glob("*.tmp"))
    assert load_complete_index(tmp_path, "k", print) is None
    (tmp_path / "index.json").write_text("[1, 2]")
    assert read_json(tmp_path / "index.json") is None and read_json(tmp_path / "missing.json") is None
