"""The shipped task builders and the hand-made baseline, at small size: scripts/make_token_task.py
tags exactly the docstring words that name a parameter (required or with a default);
scripts/token_baseline.py fits its per-token logistic regression and reports entity F1;
scripts/make_classification_task.py --pairs writes a relatedness regression task;
scripts/param_copy_probe.py masks exactly the parameter mentions; scripts/make_error_task.py tags
exactly the words it corrupted."""
from __future__ import annotations

import json
from collections import Counter
import sysconfig
from pathlib import Path

import pytest
import torch

from mlm.checkpoint import load_pretrained
from mlm.tasks.linear_probe import fit_sparse_logistic_regression
from mlm.tasks.tagged import read_tagged
from helpers import REPO, load_script, tiny_checkpoint

STDLIB = Path(sysconfig.get_paths()["stdlib"])


def load(name: str):
    return load_script(REPO / "scripts" / f"{name}.py")


@pytest.fixture(scope="module")
def token_task(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("params")
    code = load("make_token_task").main(["--out", str(out), "--root", str(STDLIB / "email"), "--train-size", "40",
                                         "--dev-size", "12", "--test-size", "12"])
    assert code == 0
    return out


def test_token_task_tags_the_parameter_mentions(token_task):
    make = load("make_token_task")
    assert make.signature_words("sorted", __import__("ast").parse("def f(iterable, *, key=None): pass").body[0].args) \
        == ["sorted", "(", "iterable", ",", "*", ",", "key", "=", "None", ")"]
    rows = [json.loads(line) for line in (token_task / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 40
    for row in rows:
        words, tags = row["tokens"], row["tags"]
        colon = words.index(":")  # the end of the signature
        head = words[:colon]
        assert set(tags[:colon + 1]) == {"O"}
        named = {w for w in head[2:] if w.isidentifier()} - {"self", "cls", "None", "True", "False"}
        for word, tag in zip(words[colon + 1:], tags[colon + 1:]):
            if tag != "O":
                assert tag in ("B-PARAM", "B-OPTION") and word in named, (row["source"], word)
    assert read_tagged(token_task / "test.jsonl").words  # valid BIO for the fine-tuning reader


def test_token_baseline_reports_entity_f1(token_task):
    baseline = load("token_baseline")
    assert baseline.shape("fooBar_1") == "xXx_d" and baseline.shape("Foo") == "Xx"
    result = baseline.baseline(str(token_task / "train.jsonl"), str(token_task / "dev.jsonl"),
                               str(token_task / "test.jsonl"), l2=1e-2, max_iter=30)
    assert 0.0 <= result["test_entity_f1"] <= 1.0 and result["l2"] == 1e-2 and result["features"] > 100
    assert result["labels"] == ["O", "B-OPTION", "I-OPTION", "B-PARAM", "I-PARAM"]
    # The sparse fit itself: a feature that decides the class is learned perfectly.
    clf = fit_sparse_logistic_regression([[0, 2], [1, 2], [0], [1]], [0, 1, 0, 1], num_features=3, num_classes=2)
    assert clf.predict([[0], [1, 2]]) == [0, 1] and clf.weight.dtype == torch.float64


def test_pairs_task_is_a_relatedness_regression(tmp_path):
    out = tmp_path / "pairs"
    topics = tmp_path / "topics.json"
    topics.write_text(json.dumps({"text": ["difflib", "textwrap"], "archives": ["tarfile", "zipfile"]}))
    code = load("make_classification_task").main(["--out", str(out), "--pairs", "--topics-json", str(topics),
                                                   "--train-per-label", "12", "--dev-per-label", "3",
                                                   "--test-per-label", "3"])
    assert code == 0
    rows = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 24 and {r["label"] for r in rows} == {0.0, 1.0, 2.0}
    for r in rows:
        same_module = r["source"].split(".")[0] == r["source_pair"].split(".")[0]
        assert (r["label"] == 2.0) == same_module and r["text"] and r["text_pair"]


def test_param_copy_probe_masks_each_single_token_parameter_mention(token_task, tmp_path):
    """Every docstring word tagged as a parameter that is one token of the checkpoint's tokenizer is
    masked once (signature words never are), and the top-1 rates are shares of those."""
    path = tiny_checkpoint(tmp_path, max_seq_len=512)
    _, tokenizer = load_pretrained(path)
    expected = 0
    for line in (token_task / "test.jsonl").read_text().splitlines():
        row = json.loads(line)
        word_ids = tokenizer.encode(row["tokens"], is_pretokenized=True).word_ids
        start = row["tokens"].index(":") + 1
        expected += sum(1 for i in range(start, len(row["tokens"]))
                        if row["tags"][i] != "O" and word_ids.count(i) == 1)
    result = load("param_copy_probe").probe(str(path), str(token_task / "test.jsonl"), max_examples=100)
    assert expected > 0 and result["parameter_masked"] == expected
    assert result["other_masked"] > 0
    assert 0.0 <= result["parameter_top1"] <= 1.0 and 0.0 <= result["other_top1"] <= 1.0


def test_error_task_tags_exactly_the_corrupted_words(tmp_path):
    """Each tagged span is a real change of the clean sentence (a SUB word differs, a SWAP pair is
    the clean pair exchanged), everything else is the clean text, and the same seed gives the same files."""
    make = load("make_error_task")
    args = ["--root", str(STDLIB / "email"), "--train-size", "60", "--dev-size", "10", "--test-size", "10"]
    assert make.main(["--out", str(tmp_path / "a"), *args, "--corpus", str(tmp_path / "new" / "corpus.jsonl")]) == 0
    assert make.main(["--out", str(tmp_path / "b"), *args]) == 0
    assert (tmp_path / "a" / "train.jsonl").read_bytes() == (tmp_path / "b" / "train.jsonl").read_bytes()
    clean = {" ".join(w): w for w, _ in sum(make.collect(STDLIB / "email", 8, 40).values(), [])}
    rows = [json.loads(line) for line in (tmp_path / "a" / "train.jsonl").read_text().splitlines()]
    errors = Counter(t for r in rows for t in r["tags"] if t.startswith("B-"))
    assert len(rows) == 60 and errors["B-SUB"] > 5 and errors["B-SWAP"] > 5
    for row in rows:
        words, tags = row["tokens"], row["tags"]
        original = list(words)
        for i, tag in enumerate(tags):
            if tag == "B-SWAP":
                assert tags[i + 1] == "I-SWAP" and words[i] != words[i + 1]
                original[i], original[i + 1] = words[i + 1], words[i]
        candidates = [c for c in clean.values() if len(c) == len(words)
                      and all(c[i] == original[i] for i, t in enumerate(tags) if t != "B-SUB")]
        assert candidates, row  # the clean sentence, up to the substituted words
        assert any(all(c[i] != words[i] for i, t in enumerate(tags) if t == "B-SUB") for c in candidates)
    assert read_tagged(tmp_path / "a" / "test.jsonl").words
    assert make.main(["--out", str(tmp_path / "c"), "--root", str(tmp_path / "missing")]) == 2
    # The pretraining corpus: every docstring of the training files, and none of a dev or test file.
    files = sorted((STDLIB / "email").rglob("*.py"))
    split = {f: make.split_of(f.relative_to(STDLIB / "email").as_posix(), dev=0.1, test=0.2) for f in files}
    expected = [doc for f in files if split[f] == "train" for doc in make.docstrings_of(f)]
    corpus = [json.loads(line)["text"] for line in (tmp_path / "new" / "corpus.jsonl").read_text().splitlines()]
    assert corpus == expected and set(split.values()) == {"train", "dev", "test"}
    assert [p.name for p in (tmp_path / "new").iterdir()] == ["corpus.jsonl"]  # no partial file left
    pretraining_text = {tuple(w) for w in make.sentences_of(corpus, 8, 40)}
    held_out = make.collect(STDLIB / "email", 8, 40)
    assert held_out["test"] and not pretraining_text & {tuple(w) for w, _ in held_out["dev"] + held_out["test"]}
