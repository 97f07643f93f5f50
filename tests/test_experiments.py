"""Smoke tests of scripts/experiments/*.py at --tiny size (numbers meaningless, plumbing checked).

Each script's `main(argv)` runs in-process on the small pydoc-topics corpus (conftest), with one
shared work dir, so the tiny pretraining happens once and the later experiments reuse it, the
way the real runs share their pretraining. The JSON is checked without matplotlib; the PNG only
when matplotlib is importable.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from helpers import load_script

REPO = Path(__file__).resolve().parent.parent
EXPERIMENTS = REPO / "scripts" / "experiments"
HAVE_MPL = importlib.util.find_spec("matplotlib") is not None


def load(name: str):
    return load_script(EXPERIMENTS / f"{name}.py")


@pytest.fixture(scope="module")
def work(tmp_path_factory, corpus_file) -> tuple[Path, list[str]]:
    """A shared work dir (tiny pretraining cache) and the corpus overrides."""
    return tmp_path_factory.mktemp("exp_work"), [f"data.train_files=[{corpus_file}]", "data.txt_documents=paragraph",
                                                  "train.num_threads=1"]


def run(name: str, work, out: Path, *extra: str) -> dict:
    work_dir, overrides = work
    code = load(name).main(["--tiny", "--work-dir", str(work_dir), "--out", str(out), *extra, *overrides])
    assert code == 0
    result = json.loads((out / f"{name}.json").read_text())
    assert result["experiment"] == name and result["tiny"] is True
    assert (out / f"{name}.png").is_file() == HAVE_MPL
    return result


def test_special_token_bug(work, tmp_path):
    r = run("special_token_bug", work, tmp_path, "--bug-steps", "2", "--blocks", "8")
    for key in ("checkpoint_as_trained", "after_buggy_training"):
        for where in ("text_positions", "position_0_masked"):
            s = r[key][where]
            assert s["p_cls_correct_all_exactly_zero"] and s["p_any_special_correct_max"] == 0.0
            assert s["kl_correct_buggy_all_finite"]
            assert s["kl_buggy_correct_mean"] == "inf"
            assert s["kl_buggy_correct_infinite_positions"] == s["positions"] > 0
            assert s["kl_matches_minus_log1m_qcls_max_abs_diff"] < 1e-9
            assert 0 <= s["hijacked_positions"] <= s["positions"]


def test_probing(work, tmp_path):
    r = run("probing", work, tmp_path, "--train-sentences", "16", "--dev-sentences", "8", "--test-sentences", "8")
    layers = r["by_layer"]["pretrained/intact"]
    assert len(layers) == r["config"]["model"]["num_layers"] + 1
    assert set(r["by_layer"]) == {"pretrained/intact", "pretrained/verb_masked", "random_init/intact",
                                  "random_init/verb_masked"}
    assert all(0.0 <= x["test_accuracy"] <= 1.0 for rows in r["by_layer"].values() for x in rows)


def test_mask_dependence(work, tmp_path):
    r = run("mask_dependence", work, tmp_path, "--distances", "1,8", "--pairs", "16")
    assert [x["distance"] for x in r["by_distance"]] == [1, 8]
    assert all(x["predictions"] == 2 * x["pairs"] for x in r["by_distance"])


def test_mask_ratio(work, tmp_path):
    r = run("mask_ratio", work, tmp_path, "--alphas", "0.1,0.5", "--maskings", "3", "--steps", "2", "--no-finetune")
    fit = r["variance"]["fit"]["pretrained"]
    assert isinstance(fit["exponent"], float)
    assert [x["alpha"] for x in r["equal_compute"]["runs"]] == [0.1, 0.5]
    assert r["downstream"]["done"] is False


def test_surprisal_masking(work, tmp_path):
    r = run("surprisal_masking", work, tmp_path, "--steps", "2", "--eval-every", "2", "--signal-batches", "1",
            "--groups", "2")
    sig = r["learning_signal_at_checkpoint"]
    assert sig["uniform"]["masked_tokens_mean"] > 0 and sig["surprisal"]["masked_tokens_mean"] > 0
    assert set(r["training"]["history"]) == {"uniform", "surprisal"}
    assert "final_eval_loss_uniform15" in r["training"]["summary"]["surprisal"]


def test_bidirectional_vs_causal(work, tmp_path):
    r = run("bidirectional_vs_causal", work, tmp_path)
    assert r["causal_mask_verified"] is True and r["same_initial_weights_as_the_mlm_run"] is True
    for kind, scores in r["cloze"].items():
        if scores["items"]:
            assert 0.0 <= scores["mlm"]["accuracy"] <= 1.0 and 0.0 <= scores["causal_full"]["accuracy"] <= 1.0


def test_causal_model_trains_on_next_token_labels_with_any_label_count():
    """The causal arm with labels on some positions only: the loss is the dense next-token loss
    (MLMModel's last-layer shortcut for labelled rows masks keys only, not per query)."""
    import torch
    import torch.nn.functional as F

    from mlm.config import ModelConfig

    module = load("bidirectional_vs_causal")
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=40, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32,
                      max_seq_len=12, special_token_ids=[0, 1, 2, 3, 4])
    model = module.CausalLM(cfg).eval()
    ids = torch.randint(5, 40, (8, 12))
    ids[:, 0] = 2  # [CLS]
    special = torch.zeros(40, dtype=torch.bool)
    special[:5] = True
    labels = module.next_token_labels(ids, special)
    labels[:, 0] = -100
    labels[:, 9:] = -100  # 8 labels per row, 64 in all: every row has fewer queries than positions
    out = model(ids, labels=labels)
    dense = model(ids).logits  # (b, s, V)
    where = labels != -100
    expected = F.cross_entropy(dense[where], labels[where])
    torch.testing.assert_close(out.loss, expected, atol=1e-5, rtol=1e-5)


def test_step_blocks_match_the_trainer():
    """The causal arm of bidirectional_vs_causal trains on the shared MLM run's exact batches."""
    import numpy as np

    sys.path.insert(0, str(EXPERIMENTS))
    import common
    from mlm.collate import MLMCollator
    from mlm.loop import MaskedBatches

    data = np.arange(7 * 4).reshape(7, 4) + 10  # 7 blocks: batches of 3 cross epoch boundaries
    unmasked = MLMCollator(vocab_size=100, mask_token_id=4, pad_token_id=0, special_token_ids=[0, 1, 2, 3, 4],
                           mlm_probability=0.0)
    batches = MaskedBatches(data, unmasked, batch_size=3, seed=5)
    for step in range(6):
        assert np.array_equal(common.step_blocks(data, 3, 5, step), batches.get(step)["input_ids"].numpy())


def test_json_without_matplotlib(work, tmp_path, monkeypatch):
    """The numbers never depend on the optional plotting extra."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    work_dir, overrides = work
    code = load("mask_dependence").main(["--tiny", "--work-dir", str(work_dir), "--out", str(tmp_path),
                                         "--distances", "2", "--pairs", "8", *overrides])
    assert code == 0
    assert (tmp_path / "mask_dependence.json").is_file()
    assert not (tmp_path / "mask_dependence.png").exists()
