"""mlm.data.prepare: prepare_data reuses, invalidates and rebuilds the cache; the cache key and file
names stay what older versions wrote; the tokenizer is trained once; the CLI's two outcomes."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from mlm.config import ConfigError, load_config
from mlm.data import prepare_data
from mlm.data.prepare import blocks_key, output_settings, trained_tokenizer_name
from mlm.data.readers import Source
from tests.data.data_helpers import REPO, check_stream, make_cfg, make_docs, run, shard_bytes, stable, write_lines

# ------------------------------------------------------------------------------- the cache key


PINNED_SETTINGS = SimpleNamespace(
    validation_fraction=0.02, text_field="text", txt_documents="line", min_chars=1, max_chunk_chars=100_000,
    max_record_chars=64_000_000, hf_split="train", hf_config="", seq_len=128, shard_blocks=65536,
    tokenizer_type="wordpiece", vocab_size=8192, tokenizer_sample_bytes=100_000_000)
PINNED_SOURCES = [
    Source("file", "/corpus/a.txt", "text", 1234, 1700000000123456789),
    Source("file", "/corpus/b.jsonl.gz", "body", 99, 1700000000000000001),
    Source("hf", "/data/saved", "text", 77, 0, {"folder": True, "split": "train", "files": [["x.arrow", 77, 5]]}),
    Source("hf", "user/corpus", "text", 0, 0, {"folder": False, "config": "en", "split": "train"}),
]


def test_cache_key_and_tokenizer_file_name_are_those_older_versions_wrote():
    # Literals computed once with the code before the mlm.data package (one data.py, its `_digest`):
    # a cache prepared by it must be found, and reused, by this code.
    settings = output_settings(PINNED_SETTINGS)
    assert blocks_key(PINNED_SOURCES, settings, "0123456789abcdef", np.dtype("<u2")) == "8d682d5d370fe0a9"
    assert blocks_key(PINNED_SOURCES, settings, "0123456789abcdef", np.dtype("<i4")) == "1ef183ff92b9c768"
    assert trained_tokenizer_name(PINNED_SETTINGS, PINNED_SOURCES, "0.20.3") == \
        "wordpiece-8192-639d1144cc696baa.json"


def test_cache_reuse_and_invalidation(tmp_path, corpus):
    root, docs = corpus
    cfg = make_cfg(tmp_path, [root], validation_fraction=0.1, vocab_size=400)
    first, messages = run(cfg)
    assert any("training" in m for m in messages)
    assert first.stats["reused"] is False

    again, messages = run(cfg)
    assert again.stats["reused"] is True and again.directory == first.directory
    assert not any("training" in m for m in messages)
    assert shard_bytes(again) == shard_bytes(first)

    # a different seq_len reuses the tokenizer but builds new blocks
    cfg32 = make_cfg(tmp_path, [root], validation_fraction=0.1, vocab_size=400, seq_len=32)
    longer, messages = run(cfg32)
    assert not any("training" in m for m in messages)
    assert longer.directory != first.directory and longer.train.seq_len == 32

    # touching a source (same content, new mtime) invalidates the tokenizer and the blocks
    st = os.stat(root / "b.jsonl")
    os.utime(root / "b.jsonl", ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    touched, messages = run(cfg)
    assert touched.stats["reused"] is False and touched.directory != first.directory
    assert any("training" in m for m in messages)
    assert touched.stats["documents"] == first.stats["documents"]

    # changing a source's content changes the result
    with open(root / "a.txt", "a") as f:
        f.write("A brand new document about the world.\n")
    changed, _ = run(cfg)
    assert changed.stats["reused"] is False
    assert changed.stats["documents"] == first.stats["documents"] + 1
    check_stream(changed, docs[:250] + ["A brand new document about the world."] + docs[250:], fraction=0.1)


def test_touched_source_with_a_given_tokenizer_rebuilds_the_same_bytes(tmp_path, tok_path, corpus):
    root, _ = corpus
    cfg = make_cfg(tmp_path, [root], tok_path, validation_fraction=0.1)
    first, _ = run(cfg)
    os.utime(root / "c.txt", ns=(os.stat(root / "c.txt").st_atime_ns, os.stat(root / "c.txt").st_mtime_ns + 10**9))
    second, _ = run(cfg)
    assert second.stats["reused"] is False and second.directory != first.directory
    assert shard_bytes(second) == shard_bytes(first)


def test_incomplete_cache_is_rebuilt(tmp_path, tok_path, corpus):
    root, docs = corpus
    cfg = make_cfg(tmp_path, [root], tok_path, shard_blocks=37)
    first, _ = run(cfg)
    (first.directory / first.train.shards[1]["file"]).unlink()
    messages: list[str] = []
    second = prepare_data(cfg, log=messages.append)
    assert second.stats["reused"] is False
    assert any("missing" in m for m in messages)
    check_stream(second, docs)


# ------------------------------------------------------------------------------- the tokenizer


def test_trained_tokenizer_is_cached_and_reproduces_the_shards(tmp_path, corpus):
    # tokenizers' BPE/WordPiece trainer is not deterministic across processes (huggingface/tokenizers
    # #1794), so the trained tokenizer is saved once and the shards are a function of it.
    root, docs = corpus
    a, _ = run(make_cfg(tmp_path / "x", [root], validation_fraction=0.1, shard_blocks=50, vocab_size=400))
    saved = a.directory / "tokenizer.json"
    b, _ = run(make_cfg(tmp_path / "y", [root], saved, validation_fraction=0.1, shard_blocks=50))
    assert b.stats["tokenizer_hash"] == a.stats["tokenizer_hash"]
    assert shard_bytes(a) == shard_bytes(b)
    assert stable(a.stats) == stable(b.stats)
    check_stream(a, docs, fraction=0.1)


def test_new_config_fields_are_validated():
    with pytest.raises(ConfigError, match="data.max_chunk_chars"):
        load_config(None, ["data.max_chunk_chars=10"])
    with pytest.raises(ConfigError, match="data.max_record_chars"):
        load_config(None, ["data.max_record_chars=0"])
    with pytest.raises(ConfigError, match="data.min_chars"):
        load_config(None, ["data.min_chars=5000", "data.max_chunk_chars=1000"])
    assert load_config(None, ["data.max_chunk_chars=5000"]).data.max_chunk_chars == 5000


# ------------------------------------------------------------------------------- the CLI


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "mlm.prepare", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_bad_path_is_one_line_without_traceback(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(f"output_dir: {tmp_path / 'run'}\ndata:\n  train_files: [{tmp_path / 'missing.txt'}]\n")
    proc = _cli(["--config", str(config)], tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert lines[0].startswith("error: ") and "missing.txt" in lines[0]


def test_cli_success_prints_a_summary(tmp_path, tok_path):
    import json

    f = write_lines(tmp_path / "a.jsonl", [json.dumps({"text": t}) for t in make_docs(300, seed=11)] + ["{bad"])
    config = tmp_path / "c.yaml"
    config.write_text(f"output_dir: {tmp_path / 'run'}\nlog:\n  progress: false\n"
                      f"data:\n  train_files: [{f}]\n  tokenizer: {tok_path}\n  seq_len: 32\n")
    proc = _cli(["--config", str(config), "data.validation_fraction=0.1"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "documents  300" in proc.stdout and "malformed_json" in proc.stdout
    assert f"{f}:301" in proc.stderr  # the warning names file and line
