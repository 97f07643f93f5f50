"""Fine-tuning beyond sequence classification: token classification (BIO tags per word, JSON Lines
or CoNLL, entity F1 with early stopping on it) and regression on text pairs (Pearson, Spearman,
MSE), each learned clearly by a tiny model; results.json holds the metrics of validation and test,
the baselines and the throughput; the saved model reloads and tags new sentences word by word;
data mistakes are one line and exit code 2."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from mlm.errors import run_cli
from mlm.finetune import FinetuneConfig, entity_metrics, finetune, load_classifier, main, predict_tags, read_tagged
from mlm.schema import ConfigError, load_config
from helpers import REPO, tiny_checkpoint

NAMES, PLACES = ["guido", "tim", "barry", "raymond"], ["amsterdam", "paris", "london"]
FILLER = ["the", "code", "is", "in", "a", "list", "wrote", "for", "module", "returns"]


def tagged(n: int, seed: int) -> list[dict]:
    """Sentences with PER spans of three words (B I I) and one-word LOC entities among filler."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words, tags = [], []
        for _ in range(rng.randint(3, 12)):
            k = rng.random()
            if k < 0.15:
                words += [rng.choice(NAMES), "van", "rossum"]
                tags += ["B-PER", "I-PER", "I-PER"]
            elif k < 0.3:
                words.append(rng.choice(PLACES))
                tags.append("B-LOC")
            else:
                words.append(rng.choice(FILLER))
                tags.append("O")
        out.append({"tokens": words, "tags": tags})
    return out


def scored_pairs(n: int, seed: int) -> list[dict]:
    """Text pairs whose score is how often "fast" occurs in both segments together (0..4)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k, j = rng.randint(0, 2), rng.randint(0, 2)
        a, b = [rng.choice(FILLER) for _ in range(4)] + ["fast"] * k, [rng.choice(FILLER) for _ in range(4)] + ["fast"] * j
        rng.shuffle(a)
        rng.shuffle(b)
        out.append({"text": " ".join(a), "pair": " ".join(b), "score": k + j})
    return out


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_conll(path: Path, rows: list[dict]) -> Path:
    body = "\n\n".join("\n".join(f"{w}\t{t}" for w, t in zip(r["tokens"], r["tags"])) for r in rows)
    path.write_text("-DOCSTART-\tO\n\n" + body + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tasks")
    return {"ckpt": tiny_checkpoint(root / "pretrained"),
            "tag_train": write_jsonl(root / "tags_train.jsonl", tagged(200, 1)),
            "tag_dev": write_jsonl(root / "tags_dev.jsonl", tagged(40, 2)),
            "tag_test": write_conll(root / "tags_test.conll", tagged(40, 3)),
            "reg_train": write_jsonl(root / "reg_train.jsonl", scored_pairs(320, 1)),
            "reg_dev": write_jsonl(root / "reg_dev.jsonl", scored_pairs(64, 2)),
            "reg_test": write_jsonl(root / "reg_test.jsonl", scored_pairs(64, 3))}


def overrides(files, kind: str, out: Path, **extra) -> list[str]:
    values = {"init_from": files["ckpt"], "data.train_file": files[f"{kind}_train"],
              "data.validation_file": files[f"{kind}_dev"], "data.test_file": files[f"{kind}_test"],
              "output_dir": out, "train.epochs": 4, "train.batch_size": 16, "train.lr": 2e-3,
              "train.precision": "fp32", "train.device": "cpu", "train.num_threads": 1}
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def config(files, kind: str, out: Path, **extra) -> FinetuneConfig:
    return load_config(REPO / "configs" / "finetune.yaml", overrides(files, kind, out, **extra), cls=FinetuneConfig)


def test_token_classification_learns_entities_and_tags_new_sentences(files, tmp_path):
    out = tmp_path / "tags"
    # Short rows (12 tokens, stride 3): most sentences are cut into windows, and still scored whole.
    results = finetune(config(files, "tag", out, task="token_classification", **{"data.max_seq_len": 12,
                                                                               "data.stride": 3}))
    saved = json.loads((out / "results.json").read_text())
    assert saved["task"] == "token_classification" and saved["selection_metric"] == "validation_entity_f1 (highest)"
    assert saved["labels"] == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    assert saved["num_test"] == 40 and saved["num_test_rows"] > 40  # sentences, and the windows they became
    assert saved["test_entity_f1"] >= 0.9 and saved["validation_entity_f1"] >= 0.9, saved
    for key in ("test_entity_precision", "test_entity_recall", "test_token_accuracy", "majority_baseline_test_entity_f1",
                "lexical_baseline_test_entity_f1", "train_examples_per_s", "inference_examples_per_s", "best_epoch"):
        assert isinstance(saved[key], (int, float)), key
    assert saved["majority_baseline_test_entity_f1"] == 0.0 and saved["history"][0]["validation_entity_f1"] >= 0
    # The saved model tags word lists one tag per word, reproducing the test score.
    model, tok, info = load_classifier(out)
    assert info["task"] == "token_classification" and info["stride"] == 3
    test = read_tagged(files["tag_test"])
    predicted = predict_tags(model, tok, info, test.words)
    assert [len(p) for p in predicted] == [len(w) for w in test.words]
    assert entity_metrics(test.tags, predicted)["entity_f1"] == pytest.approx(results["test_entity_f1"])


def test_regression_on_text_pairs(files, tmp_path):
    results = finetune(config(files, "reg", tmp_path / "reg", task="regression", save_checkpoint=False, **{
        "data.text_pair_field": "pair", "data.label_field": "score", "train.epochs": 6}))
    assert results["task"] == "regression" and results["selection_metric"] == "validation_mse (lowest)"
    assert results["test_pearson"] >= 0.7 and results["test_spearman"] >= 0.7, results
    assert results["test_mse"] < 0.5 * results["constant_baseline_test_mse"]  # well below predicting the mean
    assert {"validation_pearson", "validation_spearman", "validation_mse"} <= set(results)


def test_cli_reports_data_mistakes_in_one_line(files, tmp_path, capsys):
    bad = tmp_path / "bad_test.jsonl"
    bad.write_text('{"tokens": ["guido"], "tags": ["B-PER"]}\n{"tokens": ["a", "b"], "tags": ["O", "I-LOC"]}\n')
    argv = ["--config", str(REPO / "configs" / "finetune.yaml")] + overrides(
        files, "tag", tmp_path / "x", task="token_classification", **{"data.test_file": bad})
    with pytest.raises(SystemExit) as exit_:
        run_cli(main, argv)
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and "\n" not in err and "Traceback" not in err
    assert "bad_test.jsonl:2" in err and "'I-LOC'" in err
    with pytest.raises(ConfigError, match="task must be one of sequence_classification, token_classification, regression"):
        config(files, "tag", tmp_path, task="ner")
    with pytest.raises(ConfigError, match="data.stride must be zero or positive"):
        config(files, "tag", tmp_path, **{"data.stride": -1})
    (tmp_path / "reg_bad.jsonl").write_text('{"text": "a", "pair": "b", "score": "high"}\n')
    with pytest.raises(Exception, match=r"reg_bad\.jsonl:1: 'score' must be a finite number"):
        finetune(config(files, "reg", tmp_path / "y", task="regression", **{
            "data.text_pair_field": "pair", "data.label_field": "score", "data.train_file": tmp_path / "reg_bad.jsonl"}))
