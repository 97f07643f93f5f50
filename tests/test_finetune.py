"""Fine-tuning: a small labeled task built here is learned clearly above chance, from a checkpoint
and from scratch; the saved classifier reloads; early stopping stops; label and file mistakes
are one clear line. Plus the linear probe."""
from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mlm import checkpoint as ck
from mlm.config import ConfigError, load_config
from mlm.errors import UserError, run_cli
from mlm.finetune import main as finetune_main
from mlm.finetune import (FinetuneConfig, classification_metrics, finetune, label_names, load_classifier, predict,
                          read_labeled, tokenize)
from mlm.probe import fit_logistic_regression, linear_probe
from helpers import tiny_checkpoint

REPO = Path(__file__).resolve().parent.parent
GOOD = ["fast", "simple", "correct", "clear", "stable", "safe", "small", "portable"]
BAD = ["slow", "broken", "wrong", "confusing", "fragile", "unsafe", "huge", "obsolete"]
NOUNS = ["function", "module", "class", "list", "string", "loop", "value", "object", "method", "file",
         "tuple", "set", "dictionary", "iterator", "generator", "statement"]
FILLER = ["the", "a", "this", "new", "old", "default", "our", "every", "python", "code", "here", "really"]


def _examples(n: int, seed: int) -> list[dict]:
    """A two-label task: the label is carried by one adjective among distractor words."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        label = "good" if i % 2 == 0 else "bad"
        words = [rng.choice(FILLER) for _ in range(rng.randint(2, 6))]
        words.insert(rng.randint(0, len(words)), rng.choice(NOUNS))
        words.insert(rng.randint(0, len(words)), "is " + rng.choice(GOOD if label == "good" else BAD))
        out.append({"text": " ".join(words) + " .", "label": label})
    return out


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("task")
    test_csv = root / "test.csv"
    with open(test_csv, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["label", "text"])
        writer.writeheader()
        writer.writerows(_examples(80, seed=3))
    return {"train": _write_jsonl(root / "train.jsonl", _examples(320, seed=1)),
            "dev": _write_jsonl(root / "dev.jsonl", _examples(64, seed=2)), "test": test_csv,
            "ckpt": tiny_checkpoint(root / "pretrained", noise=0.0)}


def _overrides(task: dict[str, Path], out: Path, **extra) -> list[str]:
    values = {"init_from": task["ckpt"], "data.train_file": task["train"], "data.validation_file": task["dev"],
              "data.test_file": task["test"], "output_dir": out, "train.epochs": 6, "train.batch_size": 16,
              "train.lr": 2e-3, "train.precision": "fp32", "train.device": "cpu", "train.num_threads": 1,
              "train.patience": 0}
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def _config(task, out, **extra) -> FinetuneConfig:
    return load_config(REPO / "configs" / "finetune.yaml", _overrides(task, out, **extra), cls=FinetuneConfig)


def test_finetune_from_a_checkpoint_is_clearly_above_chance(task, tmp_path):
    out = tmp_path / "ft"
    results = finetune(_config(task, out))
    saved = json.loads((out / "results.json").read_text())
    assert saved["test_accuracy"] == results["test_accuracy"]
    for key in ("validation_accuracy", "test_accuracy", "test_macro_f1"):
        assert saved[key] >= 0.85, saved  # chance is 0.5
    assert saved["labels"] == ["bad", "good"] and saved["num_test"] == 80
    # The checkpoint reloads as a classifier that reproduces the test accuracy, and as an encoder.
    model, tok, info = load_classifier(out)
    test = read_labeled(task["test"])
    rows = tokenize(tok, test, info["max_seq_len"])
    gold = [info["labels"].index(label) for label in test.labels]
    pred = predict(model, rows, tok.token_to_id("[PAD]"), 32, model.classifier.weight.device)
    assert classification_metrics(pred, gold, 2)["accuracy"] == pytest.approx(saved["test_accuracy"])
    encoder, _ = ck.load_pretrained(saved["checkpoint"])
    assert encoder.cfg.hidden_size == 32


def test_scratch_trains_the_same_architecture(task, tmp_path):
    out = tmp_path / "scratch"
    results = finetune(_config(task, out, init_from="scratch", architecture_from=task["ckpt"], **{"head.pooling": "mean"}))
    assert results["init_from"] == "scratch" and results["test_accuracy"] >= 0.75
    model, _, info = load_classifier(out)
    assert info["pooling"] == "mean" and model.encoder.cfg.num_layers == 2


def test_scratch_from_a_tokenizer_and_a_model_section(task, tmp_path):
    cfg = _config(task, tmp_path / "s2", init_from="scratch", tokenizer=task["ckpt"] / "tokenizer.json",
                  **{"model.hidden_size": 16, "model.num_heads": 2, "model.num_layers": 1,
                     "model.intermediate_size": 32, "model.max_seq_len": 32, "train.epochs": 1,
                     "save_checkpoint": False})
    results = finetune(cfg)
    assert "checkpoint" not in results and 0.0 <= results["test_accuracy"] <= 1.0


def test_early_stopping_stops_when_validation_does_not_improve(task, tmp_path):
    results = finetune(_config(task, tmp_path / "es", **{"train.lr": 1e-9, "train.epochs": 50, "train.patience": 2,
                                                         "save_checkpoint": False}))
    assert results["stopped_early"] and len(results["history"]) == 3 and results["best_epoch"] == 1


def test_config_mistakes_are_named(task, tmp_path):
    with pytest.raises(ConfigError, match="init_from=scratch needs architecture_from"):
        _config(task, tmp_path, init_from="scratch")
    with pytest.raises(ConfigError, match="init_from must be set"):
        load_config(None, ["data.train_file=x.jsonl"], cls=FinetuneConfig)
    with pytest.raises(ConfigError, match="head.pooling"):
        _config(task, tmp_path, **{"head.pooling": "max"})


def test_labels_ints_and_strings_and_unknown_labels(tmp_path):
    ints = _write_jsonl(tmp_path / "ints.jsonl", [{"text": "a", "label": 10}, {"text": "b", "label": 2},
                                                  {"text": "c", "label": 2.0}])
    data = read_labeled(ints)
    assert data.labels == ["10", "2", "2"] and label_names(data.labels) == ["2", "10"]
    bad = _write_jsonl(tmp_path / "bad.jsonl", [{"text": "a", "label": "x"}, {"sentence": "b", "label": "y"}])
    with pytest.raises(UserError, match=r"bad\.jsonl:2: no 'text' field .*sentence"):
        read_labeled(bad)


def test_cli_reports_a_label_missing_from_training_in_one_line(task, tmp_path, capsys):
    test = _write_jsonl(tmp_path / "test.jsonl", [{"text": "the list is fast .", "label": "neutral"}])
    argv = ["--config", str(REPO / "configs" / "finetune.yaml")] + _overrides(
        task, tmp_path / "x", **{"data.test_file": test})
    with pytest.raises(SystemExit) as exit_:
        run_cli(finetune_main, argv)
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and "\n" not in err
    assert "test.jsonl" in err and "'neutral'" in err


def test_linear_probe_reports_accuracy(task):
    # The logistic regression itself: separable data is fitted perfectly.
    x = torch.cat([torch.randn(50, 3) + 3, torch.randn(50, 3) - 3])
    y = [0] * 50 + [1] * 50
    assert fit_logistic_regression(x, y, 2, l2=1e-3).predict(x) == y
    model, tok = ck.load_pretrained(task["ckpt"])
    result = linear_probe(model, tok, task["train"], task["test"], task["dev"])
    assert 0.0 <= result["test_accuracy"] <= 1.0 and result["l2"] in (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
    assert result["majority_baseline_test_accuracy"] == pytest.approx(0.5)


def test_a_classifier_saved_before_task_types_still_loads(task, tmp_path):
    """classifier.json without task/transform and a bare weight/bias head (earlier versions) load as
    the dropout -> linear head they were, with the same predictions."""
    out = tmp_path / "old"
    finetune(_config(task, out, **{"head.transform": "none", "train.epochs": 1}))
    model, tok, info = load_classifier(out)
    folder = ck.resolve_checkpoint(out)
    old_info = {k: info[k] for k in ("labels", "pooling", "text_field", "text_pair_field", "max_seq_len")}
    (folder / "classifier.json").write_text(json.dumps(old_info))
    save_file({k: v.contiguous() for k, v in model.classifier.state_dict().items()}, str(folder / "classifier.safetensors"))
    manifest = json.loads((folder / "manifest.json").read_text())  # re-sign the edited files
    manifest["files"] = {n: {"size": (folder / n).stat().st_size, "sha256": ck.sha256_file(folder / n)}
                         for n in manifest["files"]}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    again, _, info2 = load_classifier(folder)
    assert info2["task"] == "sequence_classification" and info2["transform"] == "none" and again.transform is None
    ids = torch.tensor([tok.encode("the list is fast .").ids])
    assert torch.equal(again(ids), model(ids))
