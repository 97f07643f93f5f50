"""Using a checkpoint: fill-mask never answers a special token, PLL is the sum of one-by-one
masked log-probabilities, held-out masked metrics are reproducible, and a broken checkpoint
folder ends in one clear line.

`helpers.tiny_checkpoint` builds a small model and a tokenizer trained on the stdlib's pydoc topics
and saves them with `save_checkpoint`: no trainer run, a second or less.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from helpers import tiny_checkpoint, tiny_tokenizer, topic_texts
from mlm import checkpoint as ck
from mlm.errors import UserError, run_cli
from mlm.model import MLMModel
from mlm.tokenizer import MASK, PAD, special_token_ids

SENTENCES = ["the cat sat on the mat .", "return the value of the attribute named by the string .",
             "a list is a mutable sequence of objects ."]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny"), noise=0.3)


# ---------------------------------------------------------------- fill-mask

def test_fill_mask_never_returns_a_special_token(tmp_path):
    from mlm.fill_mask import fill_mask

    path = tiny_checkpoint(tmp_path, noise=0.3)
    model, tok = ck.load_pretrained(path)
    specials = special_token_ids(tok)
    with torch.no_grad():  # make the special ids the most likely tokens if nothing excluded them
        model.head.bias[specials] = 100.0
    everything = model.cfg.vocab_size
    preds = fill_mask(model, tok, f"the cat sat on the {MASK} .", top_k=everything)[0]
    assert len(preds) == everything - len(specials)
    assert not {p.token_id for p in preds} & set(specials)
    assert abs(sum(p.probability for p in preds) - 1.0) < 1e-4
    assert preds == sorted(preds, key=lambda p: -p.probability)
    # Even when the model itself does not exclude them (e.g. a config without special ids).
    model.head.special[:] = False
    model.head.has_special = False
    top = fill_mask(model, tok, f"{MASK} and {MASK}", top_k=3)
    assert len(top) == 2 and all(p.token_id not in specials for preds in top for p in preds)


def test_fill_mask_cli(ckpt, capsys):
    from mlm.fill_mask import main

    with pytest.raises(SystemExit) as exit_:
        run_cli(main, [str(ckpt.parent.parent), f"the cat sat on the {MASK} .", "--top-k", "3", "--json"])
    assert exit_.value.code == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["masks"]) == 1 and len(out["masks"][0]) == 3
    with pytest.raises(SystemExit) as exit_:
        run_cli(main, [str(ckpt), "no mask here"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and MASK in err


# ---------------------------------------------------------------- pseudo-log-likelihood

def _pll_one_by_one(model, tok, text: str) -> float:
    """The definition: mask each non-special token alone, dense forward, add its log-probability."""
    ids = tok.encode(text).ids
    specials = set(special_token_ids(tok))
    total = 0.0
    for i, t in enumerate(ids):
        if t in specials:
            continue
        masked = list(ids)
        masked[i] = tok.token_to_id(MASK)
        with torch.no_grad():
            logits = model(torch.tensor([masked])).logits[0, i]
        total += float(torch.log_softmax(logits.double(), -1)[t])
    return total


def test_pll_equals_sum_of_one_by_one_log_probabilities(ckpt):
    from mlm.evaluate import pseudo_log_likelihood

    model, tok = ck.load_pretrained(ckpt)
    batched = pseudo_log_likelihood(model, tok, SENTENCES, batch_size=7)  # batches mix sentences and padding
    for sentence, score in zip(SENTENCES, batched):
        assert score.pll == pytest.approx(_pll_one_by_one(model, tok, sentence), abs=1e-4)
        assert score.tokens == len(tok.encode(sentence).ids) - 2
        assert score.pseudo_perplexity == pytest.approx(math.exp(-score.pll / score.tokens))
    single = pseudo_log_likelihood(model, tok, SENTENCES, batch_size=1)
    assert [s.pll for s in single] == pytest.approx([s.pll for s in batched], abs=1e-4)


def test_pll_truncates_long_sentences_to_the_model_length(ckpt):
    from mlm.evaluate import pseudo_log_likelihood

    model, tok = ck.load_pretrained(ckpt)
    long = " ".join(["word"] * 200)
    (score,) = pseudo_log_likelihood(model, tok, [long])
    assert score.truncated and score.tokens == model.cfg.max_seq_len - 2


# ---------------------------------------------------------------- masked-LM metrics

def test_masked_metrics_are_reproducible_with_a_fixed_seed(ckpt, tmp_path):
    from mlm.evaluate import masked_lm_metrics

    held_out = tmp_path / "held_out.txt"
    held_out.write_text("\n".join(topic_texts(79)[60:70]), encoding="utf-8")
    first = masked_lm_metrics(ckpt, [str(held_out)], max_batches=3, batch_size=16, seed=7, device="cpu")
    again = masked_lm_metrics(ckpt, [str(held_out)], max_batches=3, batch_size=16, seed=7, device="cpu")
    other = masked_lm_metrics(ckpt, [str(held_out)], max_batches=3, batch_size=16, seed=8, device="cpu")
    assert first == again
    assert first["masked_tokens"] != other["masked_tokens"] or first["masked_loss"] != other["masked_loss"]
    assert first["seq_len"] == 32 and first["masked_tokens"] > 0
    assert first["perplexity"] == pytest.approx(math.exp(first["masked_loss"]))
    assert 0.0 <= first["masked_accuracy"] <= 1.0


def test_masked_metrics_mask_like_the_runs_validation_unless_told_otherwise(tmp_path):
    """Trained at 40% but validated at 15% (eval.mlm_probability): mlm.evaluate masks 15%, as the
    trainer's validation did; --mlm-probability picks another rate (to compare runs trained apart)."""
    from mlm.evaluate import masked_lm_metrics

    path = tiny_checkpoint(tmp_path, run_overrides=["collate.mlm_probability=0.4", "eval.mlm_probability=0.15"])
    held_out = tmp_path / "held_out.txt"
    held_out.write_text("\n".join(topic_texts(79)[:40]), encoding="utf-8")
    default = masked_lm_metrics(path, [str(held_out)], batch_size=16, seed=7, device="cpu")
    forty = masked_lm_metrics(path, [str(held_out)], batch_size=16, seed=7, device="cpu", mlm_probability=0.4)
    assert default["mlm_probability"] == 0.15 and forty["mlm_probability"] == 0.4
    # the same blocks, masked at 0.4 vs 0.15: 8/3 as many masks, within sampling noise (> 1,000 tokens)
    assert default["blocks"] == forty["blocks"] and default["masked_tokens"] > 150
    assert forty["masked_tokens"] / default["masked_tokens"] == pytest.approx(0.4 / 0.15, rel=0.15)


def test_evaluate_cli_refuses_a_masking_rate_outside_0_1(ckpt, tmp_path, capsys):
    from mlm.evaluate import main

    text = tmp_path / "held_out.txt"
    text.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    with pytest.raises(SystemExit) as exit_:
        run_cli(main, [str(ckpt), "--data", str(text), "--mlm-probability", "1.5", "--device", "cpu"])
    assert exit_.value.code != 0
    assert "--mlm-probability must be in (0, 1], got 1.5" in capsys.readouterr().err


def test_evaluate_cli_pll(ckpt, tmp_path, capsys):
    from mlm.evaluate import main

    text = tmp_path / "sentences.txt"
    text.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    per_sentence = tmp_path / "pll.jsonl"
    with pytest.raises(SystemExit) as exit_:
        run_cli(main, [str(ckpt), "--data", str(text), "--pll-only", "--pll-output", str(per_sentence),
                       "--device", "cpu"])
    assert exit_.value.code == 0
    summary = json.loads(capsys.readouterr().out)
    rows = [json.loads(l) for l in per_sentence.read_text().splitlines()]
    assert summary["pll_sentences"] == len(rows) == 3
    assert summary["pseudo_perplexity"] == pytest.approx(
        math.exp(-sum(r["pll"] for r in rows) / sum(r["tokens"] for r in rows)))


# ---------------------------------------------------------------- broken checkpoints

def _one_line_error(capsys, argv) -> str:
    from mlm.fill_mask import main

    with pytest.raises(SystemExit) as exit_:
        run_cli(main, argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_checkpoint_with_a_missing_file_is_one_clear_error(tmp_path, capsys):
    path = tiny_checkpoint(tmp_path)
    (path / ck.TOKENIZER_FILE).unlink()
    err = _one_line_error(capsys, [str(path), f"a {MASK} ."])
    assert ck.TOKENIZER_FILE in err and "missing" in err


def test_checkpoint_with_a_changed_file_is_one_clear_error(tmp_path, capsys):
    path = tiny_checkpoint(tmp_path)
    cfg = json.loads((path / ck.MODEL_CONFIG_FILE).read_text())
    cfg["hidden_size"] = 64
    (path / ck.MODEL_CONFIG_FILE).write_text(json.dumps(cfg))
    err = _one_line_error(capsys, [str(path), f"a {MASK} ."])
    assert ck.MODEL_CONFIG_FILE in err and "manifest" in err


def test_weights_that_do_not_match_the_config_are_one_clear_error(tmp_path, capsys):
    """A consistent manifest, but model_config.json describes another model than the weights."""
    good = tiny_checkpoint(tmp_path / "a")
    other = tiny_checkpoint(tmp_path / "b", num_layers=1)
    weights = ck.load_model_weights(other)
    tok = (good / ck.TOKENIZER_FILE).read_text()
    mixed = ck.save_checkpoint(tmp_path / "mixed", 1, ck.CheckpointContents(weights, ck.load_model_config(good), tok, ""))
    err = _one_line_error(capsys, [str(mixed), f"a {MASK} ."])
    assert "do not match" in err and ck.MODEL_CONFIG_FILE in err
    with pytest.raises(UserError):
        ck.load_pretrained(tmp_path / "nowhere")
