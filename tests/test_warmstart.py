"""mlm.warmstart (continued pretraining, train.init_from): the run starts from the checkpoint's weights
(step-0 loss = the checkpoint's loss on the same batch) and tokenizer (old ids kept); data.extend_vocab
adds tokens whose embeddings and decoder biases start as the mean of the old pieces; a later run with
the same command resumes its own checkpoints; what cannot work is one clear error."""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from helpers import tiny_checkpoint, tiny_overrides
from mlm import checkpoint as ck
from mlm.config import Config, load_config
from mlm.errors import UserError, run_cli
from mlm.loop import count_targets, masked_lm_loss
from mlm.model import MLMModel, ModelConfig
from mlm.schema import to_yaml
from mlm.tokenizer import PAD, special_token_ids, train_tokenizer
from mlm.prepare import main as prepare_main
from mlm.train import fit, main, setup

DOMAIN = ("Thrombocytopenia with pneumonia. The pneumonia resolved after treatment; "
          "thrombocytopenia persisted and pneumonia recurred twice.\n\n")


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A tiny checkpoint (random weights with noise, the 600-token test tokenizer, max_seq_len 64)."""
    return tiny_checkpoint(tmp_path_factory.mktemp("base"), noise=0.05)


@pytest.fixture(scope="module")
def domain_file(tmp_path_factory) -> Path:
    import pydoc_data.topics as topics

    general = "\n\n".join(topics.topics[k].strip() for k in sorted(topics.topics)[:40])[:40_000]
    path = tmp_path_factory.mktemp("domain") / "notes.txt"
    path.write_text(DOMAIN * 60 + general, encoding="utf-8")
    return path


def continued(base: Path, corpus: Path, tmp_path: Path, name: str = "run", **extra) -> Config:
    return load_config(None, tiny_overrides(corpus, tmp_path / "cache", tmp_path / name, **{
        "train.init_from": str(base), "model.max_seq_len": 64, "train.max_steps": 1, "eval.every": 0,
        "checkpoint.every": 0, **extra}))


def test_step_zero_loss_is_the_checkpoints_loss_on_the_same_batch(base, domain_file, tmp_path):
    run = setup(continued(base, domain_file, tmp_path))
    saved, saved_tok = ck.load_pretrained(base)
    assert run.prepared.tokenizer.get_vocab() == saved_tok.get_vocab()  # the checkpoint's tokenizer, same ids
    assert run.state.step == 0 and not run.optimizer.state  # a fresh optimizer, from step 0
    batch = run.batches.get(0)
    with torch.no_grad():
        expected = float(masked_lm_loss(saved, batch)) / count_targets(batch)
    final = fit(run)
    first = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 1 and abs(first["train_loss"] - expected) < 1e-5
    assert final["step"] == 1


def test_extended_vocabulary_keeps_old_ids_and_starts_new_rows_from_their_pieces(base, domain_file, tmp_path):
    run = setup(continued(base, domain_file, tmp_path, **{"data.extend_vocab": 30}))
    old_model, old_tok = ck.load_pretrained(base)
    new_tok = run.prepared.tokenizer
    old_vocab, new_vocab = old_tok.get_vocab(), new_tok.get_vocab()
    assert all(new_vocab[t] == i for t, i in old_vocab.items())
    added = sorted(set(new_vocab.values()) - set(old_vocab.values()))
    assert 0 < len(added) <= 30 and run.model_cfg.vocab_size == len(new_vocab)
    assert len(new_tok.encode(" pneumonia", add_special_tokens=False).ids) == 1
    old_emb, new_emb = old_model.embeddings.word.weight, run.model.embeddings.word.weight
    old_bias, new_bias = old_model.head.bias, run.model.head.bias
    assert torch.equal(new_emb[: len(old_vocab)], old_emb) and torch.equal(new_bias[: len(old_vocab)], old_bias)
    inv = {i: t for t, i in new_vocab.items()}
    for new_id in added:
        pieces = [t.id for t in old_tok.model.tokenize(inv[new_id])]
        assert len(pieces) > 1
        torch.testing.assert_close(new_emb[new_id], old_emb[pieces].mean(0), rtol=0, atol=1e-7)
        torch.testing.assert_close(new_bias[new_id], old_bias[pieces].mean(0), rtol=0, atol=1e-7)
    for name, tensor in run.model.state_dict().items():  # everything else is the checkpoint's
        if name not in ("embeddings.word.weight", "head.bias"):
            assert torch.equal(tensor, old_model.state_dict()[name]), name


def test_the_same_command_later_resumes_the_runs_own_checkpoints(base, domain_file, tmp_path):
    own_base = tmp_path / "base"
    shutil.copytree(base.parent.parent, own_base)
    first = continued(own_base, domain_file, tmp_path, **{"data.extend_vocab": 20, "train.max_steps": 2,
                                                          "checkpoint.every": 1})
    fit(setup(first))
    shutil.rmtree(own_base)  # resuming needs only the run's own checkpoints
    again = continued(own_base, domain_file, tmp_path, **{"data.extend_vocab": 20, "train.max_steps": 3})
    run = setup(again)
    assert run.state.step == 2
    assert run.prepared.tokenizer.to_str() == ck.load_pretrained(tmp_path / "run")[1].to_str()


def test_prepare_ahead_uses_the_checkpoints_tokenizer_and_the_trainer_reuses_its_cache(base, domain_file, tmp_path,
                                                                                       capsys):
    cfg = continued(base, domain_file, tmp_path, **{"data.extend_vocab": 20})
    overrides = tiny_overrides(domain_file, tmp_path / "cache", tmp_path / "run", **{
        "train.init_from": str(base), "model.max_seq_len": 64, "data.extend_vocab": 20})
    assert prepare_main(["--json", *overrides]) == 0
    stats = json.loads(capsys.readouterr().out)
    cached = sorted(p for p in (tmp_path / "cache").rglob("*") if p.is_file())
    run = setup(cfg)
    assert sorted(p for p in (tmp_path / "cache").rglob("*") if p.is_file()) == cached  # nothing rebuilt
    assert run.prepared.stats["reused"] and not stats["reused"]
    assert {k: v for k, v in run.prepared.stats.items() if k not in ("reused", "seconds")} == \
        {k: v for k, v in stats.items() if k not in ("reused", "seconds")}
    old = ck.load_pretrained(base)[1].get_vocab()
    assert len(old) < run.prepared.tokenizer.get_vocab_size() <= len(old) + 20


def char_checkpoint(root: Path) -> Path:
    tok = train_tokenizer(["ACDEFGHIKLMNPQRSTVWY"], 25, "char")
    cfg = ModelConfig(vocab_size=tok.get_vocab_size(), pad_token_id=tok.token_to_id(PAD),
                      special_token_ids=special_token_ids(tok), hidden_size=32, num_layers=2, num_heads=2,
                      intermediate_size=64, max_seq_len=64)
    contents = ck.CheckpointContents(MLMModel(cfg).state_dict(), asdict(cfg), tok.to_str(),
                                     to_yaml(Config(output_dir=str(root), model=cfg)))
    return ck.save_checkpoint(root / "checkpoints", 1, contents)


@pytest.mark.parametrize("extra, message", [
    ({"model.hidden_size": 48}, r"model.hidden_size is 48 in the config but 32 in train.init_from .*architecture"),
    ({"model.vocab_size": 100}, r"model.vocab_size \(100\) is smaller than the vocabulary of train.init_from"),
    ({"data.tokenizer_type": "byte_bpe"}, r"data.tokenizer_type is byte_bpe, but train.init_from .* metaspace_bpe"),
    ({"train.init_from": "nowhere/at_all"}, r"train.init_from: nowhere/at_all: checkpoint not found"),
    ({"train.init_from": "", "data.extend_vocab": 5}, r"data.extend_vocab needs train.init_from"),
    ({"data.tokenizer": "OTHER"}, r"data.tokenizer points to .*uses the checkpoint's tokenizer"),
    ({"data.extend_vocab": 5, "train.init_from": "CHAR"}, r"char tokenizer .*cannot be extended by subwords"),
])
def test_what_cannot_work_is_refused_before_any_work(base, domain_file, tmp_path, extra, message):
    if extra.get("data.tokenizer") == "OTHER":
        extra["data.tokenizer"] = str(tmp_path / "other.json")
        train_tokenizer(["some other text entirely"] * 5, 300).save(extra["data.tokenizer"])
    if extra.get("train.init_from") == "CHAR":
        extra["train.init_from"] = str(char_checkpoint(tmp_path / "char"))
    with pytest.raises(UserError, match=message):
        setup(continued(base, domain_file, tmp_path, **extra))
    assert not (tmp_path / "cache").exists()  # refused before the data was touched


def test_a_refusal_is_one_error_line_and_exit_code_2(base, domain_file, tmp_path, capsys):
    args = tiny_overrides(domain_file, tmp_path / "cache", tmp_path / "run", **{
        "train.init_from": str(base), "model.num_layers": 3})
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: model.num_layers is 3 in the config but 2")
