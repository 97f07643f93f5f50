"""The shipped task builders and the hand-made baseline, at small size: scripts/make_token_task.py
tags exactly the docstring words that name a parameter (required or with a default);
scripts/token_baseline.py fits its per-token logistic regression and reports entity F1;
scripts/make_classification_task.py --pairs writes a relatedness regression task;
scripts/param_copy_probe.py masks exactly the parameter mentions."""
from __future__ import annotations

import json
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
