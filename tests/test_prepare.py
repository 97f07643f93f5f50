"""mlm.data / mlm.prepare as a pipeline: token conservation, determinism, resume after an
interruption, cache reuse and invalidation, the default corpus, and the CLI's error path."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import mlm.data as data
from mlm.data import prepare_data, stdlib_documents
from mlm.errors import UserError

from test_data import check_stream, make_cfg, make_docs, run, write_lines  # noqa: F401
from test_data import tok_path  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[1]


def shard_bytes(prepared) -> dict[str, bytes]:
    out = {}
    for ds in (prepared.train, prepared.validation):
        for entry in ds.shards:
            out[entry["file"]] = (ds.directory / entry["file"]).read_bytes()
    return out


def stable(stats: dict) -> dict:
    drop = {"seconds", "tokenize_seconds", "documents_per_s", "tokens_per_s", "cache", "reused", "resumed",
            "tokenizer_path", "tokenizer_trained"}
    return {k: v for k, v in stats.items() if k not in drop}


@pytest.fixture()
def corpus(tmp_path):
    """Three files of mixed formats, ~600 documents, some long (several blocks)."""
    root = tmp_path / "corpus"
    root.mkdir()
    docs_a = make_docs(250, seed=1, hi=120)
    docs_b = make_docs(250, seed=2)
    docs_c = make_docs(100, seed=3, lo=100, hi=300)
    write_lines(root / "a.txt", docs_a)
    (root / "b.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs_b))
    write_lines(root / "c.txt", docs_c)
    return root, docs_a + docs_b + docs_c


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
    monkeypatch.setattr(data, "_BATCH_CHARS", 500)
    p2, _ = run(make_cfg(tmp_path / "2", [root], tok_path, validation_fraction=0.2, shard_blocks=37))
    assert shard_bytes(p1) == shard_bytes(p2)


def test_determinism_same_input_same_bytes(tmp_path, tok_path, corpus):
    root, docs = corpus
    a, _ = run(make_cfg(tmp_path / "x", [root], tok_path, validation_fraction=0.1, shard_blocks=50))
    b, _ = run(make_cfg(tmp_path / "y", [root], tok_path, validation_fraction=0.1, shard_blocks=50))
    assert a.directory != b.directory
    assert shard_bytes(a) == shard_bytes(b) and len(shard_bytes(a)) > 2
    assert stable(a.stats) == stable(b.stats)


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


class Interrupt(Exception):
    pass


def test_resume_after_an_interruption_mid_shard(tmp_path, tok_path, corpus, monkeypatch):
    root, docs = corpus
    reference, _ = run(make_cfg(tmp_path / "ref", [root], tok_path, validation_fraction=0.2, shard_blocks=37))

    monkeypatch.setattr(data, "_BATCH_CHARS", 2000)
    calls = {"encode": 0, "checkpoints": 0}
    original = data._encode

    def flaky(tok, texts):
        calls["encode"] += 1
        if calls["encode"] == 12:  # after some checkpoints, with partial shards written past the last one
            raise Interrupt
        return original(tok, texts)

    def count(state):
        calls["checkpoints"] += 1

    monkeypatch.setattr(data, "_encode", flaky)
    monkeypatch.setattr(data, "_on_checkpoint", count)
    cfg = make_cfg(tmp_path / "run", [root], tok_path, validation_fraction=0.2, shard_blocks=37)
    with pytest.raises(Interrupt):
        prepare_data(cfg, log=lambda m: None)
    assert calls["checkpoints"] >= 1
    cache = next((tmp_path / "run" / "run" / "data").glob("blocks-*"))
    progress = json.loads((cache / "progress.json").read_text())
    assert progress["position"] != [0, 0]
    assert not (cache / "index.json").exists()
    assert list(cache.glob("*.bin.tmp")), "a partial shard was being written"

    monkeypatch.setattr(data, "_encode", original)
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

    monkeypatch.setattr(data, "_BATCH_CHARS", 1500)

    def stop(state):
        raise Interrupt

    monkeypatch.setattr(data, "_on_checkpoint", stop)
    cfg = make_cfg(tmp_path / "run", [f], tok_path, shard_blocks=20)
    with pytest.raises(Interrupt):
        prepare_data(cfg, log=lambda m: None)
    monkeypatch.setattr(data, "_on_checkpoint", lambda state: None)
    resumed, _ = run(cfg)
    assert resumed.stats["resumed"] is True
    assert resumed.stats["skipped"] == {"malformed_json": 10}
    assert shard_bytes(resumed) == shard_bytes(reference)
    check_stream(resumed, kept)


def test_resume_with_a_damaged_shard_starts_over(tmp_path, tok_path, corpus, monkeypatch):
    root, docs = corpus
    monkeypatch.setattr(data, "_BATCH_CHARS", 2000)

    def stop(state):
        if len(state["writers"]["train"]["finished"]) >= 2:
            raise Interrupt

    monkeypatch.setattr(data, "_on_checkpoint", stop)
    cfg = make_cfg(tmp_path, [root], tok_path, shard_blocks=37)
    with pytest.raises(Interrupt):
        prepare_data(cfg, log=lambda m: None)
    cache = next((tmp_path / "run" / "data").glob("blocks-*"))
    shard = cache / "train-00000.bin"
    blob = bytearray(shard.read_bytes())
    blob[40] ^= 0xFF  # same size, wrong content: only the hash catches it
    shard.write_bytes(bytes(blob))
    monkeypatch.setattr(data, "_on_checkpoint", lambda state: None)
    prepared, _ = run(cfg)
    assert prepared.stats["resumed"] is False
    check_stream(prepared, docs)


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


def test_too_small_corpus_and_empty_validation_are_clear_errors(tmp_path, tok_path):
    f = write_lines(tmp_path / "tiny.txt", ["a few words"])
    with pytest.raises(UserError, match="corpus too small"):
        run(make_cfg(tmp_path, [f], tok_path))
    g = write_lines(tmp_path / "small.txt", make_docs(40, seed=9))
    with pytest.raises(UserError, match="validation split is empty"):
        run(make_cfg(tmp_path / "v", [g], tok_path, validation_fraction=0.001))


def test_stdlib_documents_parse_without_importing(tmp_path):
    lib = tmp_path / "lib"
    (lib / "pkg").mkdir(parents=True)
    (lib / "test").mkdir()
    (lib / "site-packages").mkdir()
    (lib / "pkg" / "mod.py").write_text(textwrap.dedent('''
        """Module docstring about the pkg module, long enough to keep."""
        import a_module_that_does_not_exist
        raise SystemExit("importing this would stop the process")

        class Thing:
            """Class docstring: a thing that does things in the world."""
            def method(self):
                """Method docstring explaining what the method returns."""
        if True:
            def helper():
                """Helper docstring inside an if block, also kept."""
        def short():
            """Tiny."""
        def dup():
            """Module docstring about the pkg module, long enough to keep."""
        '''))
    (lib / "pkg" / "broken.py").write_text("def (:\n")
    (lib / "test" / "test_x.py").write_text('"""A test module docstring that must be skipped."""\n')
    (lib / "site-packages" / "m.py").write_text('"""A third-party docstring that must be skipped."""\n')
    paragraphs = [f"Paragraph {i} " + "word " * 60 for i in range(20)]
    (lib / "long.py").write_text('"""' + "\n\n".join(paragraphs) + '"""\n')
    docs = list(stdlib_documents(lib, max_chars=1000))
    assert docs[0].startswith("Paragraph 0") and all(len(d) <= 1000 for d in docs)
    assert "\n\n".join(d for d in docs if d.startswith("Paragraph")) == "\n\n".join(p.strip() for p in paragraphs)
    rest = [d for d in docs if not d.startswith("Paragraph")]
    assert rest == ["Module docstring about the pkg module, long enough to keep.",
                    "Class docstring: a thing that does things in the world.",
                    "Method docstring explaining what the method returns.",
                    "Helper docstring inside an if block, also kept."]


def test_default_corpus_end_to_end(tmp_path):
    from mlm.config import Config

    cfg = Config(output_dir=str(tmp_path / "run"))
    cfg.log.progress = False
    cfg.data.vocab_size = 1000
    prepared, messages = run(cfg)
    corpus = next((tmp_path / "run" / "data" / "corpus").glob("stdlib-docs-*.jsonl"))
    assert corpus.stat().st_size > 1_500_000
    lines = corpus.read_text(encoding="utf-8").splitlines()
    texts = [json.loads(line)["text"] for line in lines]
    assert len(texts) > 5000 and max(map(len, texts)) <= 2000 and len(set(texts)) == len(texts)
    st = prepared.stats
    assert st["documents"] == len(texts) and st["skipped"] == {}
    assert len(prepared.validation) > 10 and len(prepared.train) > 2000
    assert prepared.train[0][0] == 2
    assert prepared.tokenizer.get_vocab_size() == 1000
    again, _ = run(cfg)  # built once: the corpus file is reused as is
    assert again.stats["reused"] is True and corpus.stat().st_mtime_ns == os.stat(corpus).st_mtime_ns


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
    f = write_lines(tmp_path / "a.jsonl", [json.dumps({"text": t}) for t in make_docs(300, seed=11)] + ["{bad"])
    config = tmp_path / "c.yaml"
    config.write_text(f"output_dir: {tmp_path / 'run'}\nlog:\n  progress: false\n"
                      f"data:\n  train_files: [{f}]\n  tokenizer: {tok_path}\n  seq_len: 32\n")
    proc = _cli(["--config", str(config), "data.validation_fraction=0.1"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "documents  300" in proc.stdout and "malformed_json" in proc.stdout
    assert f"{f}:301" in proc.stderr  # the warning names file and line
