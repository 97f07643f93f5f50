"""Export to transformers gives the same logits (1e-4, fp32) through AutoModelForMaskedLM and the
same ids through AutoTokenizer, offline; options without an exact equivalent are refused in one
line; a transformers BERT imports back and continues pretraining. Fine-tuned sequence classifiers,
regressors and token classifiers export to ...ForSequenceClassification / ...ForTokenClassification
with equal logits and serve in `transformers.pipeline`; heads without an exact counterpart are
refused in one line."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mlm import checkpoint as ck
from mlm.errors import UserError, run_cli
from mlm.tokenizer import MASK, special_token_ids
from helpers import tiny_checkpoint, tiny_tokenizer, topic_texts

transformers = pytest.importorskip("transformers")

TEXTS = [f"the cat sat on the {MASK} .", "return a list of the items in ascending order .", "x"]


def _batch(hf_tok, texts):
    enc = hf_tok(texts, padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


@pytest.mark.parametrize("options, architecture", [
    ({"norm": "pre"}, "RobertaPreLayerNormForMaskedLM"),
    ({"norm": "post"}, "BertForMaskedLM"),
    ({"norm": "post", "position": "rotary"}, "RoFormerForMaskedLM"),
    ({"norm": "pre", "bias": False, "layer_norm_eps": 1e-5}, "RobertaPreLayerNormForMaskedLM"),
])
def test_export_loads_in_transformers_with_equal_logits(tmp_path, options, architecture):
    from mlm.export_hf import export_hf

    path = tiny_checkpoint(tmp_path / "ckpt", noise=0.3, **options)
    result = export_hf(path, tmp_path / "hf")
    assert result["architecture"] == architecture and result["max_abs_diff"] <= 1e-4
    hf_model = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf", local_files_only=True)
    assert type(hf_model).__name__ == architecture
    model, tok = ck.load_pretrained(path)
    ids, mask = _batch(hf_tok, TEXTS)
    for row, text in enumerate(TEXTS):  # the same tokenization
        ours = tok.encode(text).ids
        assert ids[row, :len(ours)].tolist() == ours and int(mask[row].sum()) == len(ours)
    with torch.no_grad():
        theirs = hf_model(input_ids=ids, attention_mask=mask).logits
        mine = model(ids, attention_mask=mask).logits
    special = special_token_ids(tok)
    keep = torch.ones(mine.shape[-1], dtype=torch.bool)
    keep[special] = False
    real = mask.bool()
    assert (theirs[real][:, keep] - mine[real][:, keep]).abs().max() <= 1e-4
    # Special ids: -inf for us, a -10000 bias there, so their probability is exactly 0 too.
    assert torch.softmax(theirs[real], -1)[:, special].max() == 0.0


@pytest.mark.parametrize("options, message", [
    ({"activation": "geglu"}, "activation=geglu"),
    ({"position": "rotary", "norm": "pre"}, "rotary with model.norm=pre"),
    ({"position": "rotary", "norm": "post", "rope_theta": 500.0}, "rope_theta"),
])
def test_options_without_an_exact_equivalent_are_refused_in_one_line(tmp_path, capsys, options, message):
    from mlm.export_hf import main

    path = tiny_checkpoint(tmp_path / "ckpt", **options)
    with pytest.raises(SystemExit) as exit_:
        run_cli(main, [str(path), str(tmp_path / "hf")])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and "\n" not in err and message in err
    assert not (tmp_path / "hf").exists()


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory) -> Path:
    """A transformers BERT (random weights, non-zero segment embeddings) with our tokenizer."""
    tok = tiny_tokenizer()
    config = transformers.BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
                                     pad_token_id=0)
    torch.manual_seed(0)
    model = transformers.BertForMaskedLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    folder = tmp_path_factory.mktemp("bert")
    model.save_pretrained(folder)
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                         cls_token="[CLS]", sep_token="[SEP]",
                                         mask_token="[MASK]").save_pretrained(folder)
    return folder


def test_import_bert_gives_equal_logits_and_continues_pretraining(bert_folder, tmp_path):
    from mlm.config import load_config
    from mlm.export_hf import import_hf
    from mlm.train import train

    out = tmp_path / "imported"
    path = import_hf(bert_folder, out)
    assert path == out / "checkpoints" / "step_0"
    model, tok = ck.load_pretrained(out)
    assert model.cfg.norm == "post" and model.cfg.position == "learned"
    hf_model = transformers.AutoModelForMaskedLM.from_pretrained(bert_folder).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(bert_folder)
    ids, mask = _batch(hf_tok, TEXTS)
    with torch.no_grad():
        theirs = hf_model(input_ids=ids, attention_mask=mask).logits
        mine = model(ids, attention_mask=mask).logits
    keep = torch.ones(mine.shape[-1], dtype=torch.bool)
    keep[special_token_ids(tok)] = False
    assert (theirs[mask.bool()][:, keep] - mine[mask.bool()][:, keep]).abs().max() <= 1e-4

    # Continue pretraining: the written config resumes from the imported step 0.
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(topic_texts(40)), encoding="utf-8")
    cfg = load_config(out / "config.yaml", [f"data.train_files=[{corpus}]", "data.seq_len=32", "train.max_steps=2",
                                            "train.batch_size=4", "train.lr=1e-6", "train.warmup_steps=0",
                                            "eval.batches=1", "eval.every=0", "checkpoint.every=0", "log.progress=false",
                                            "train.precision=fp32", "train.num_threads=1", f"data.cache_dir={tmp_path}/c"])
    train(cfg)
    after = ck.load_model_weights(ck.resolve_checkpoint(out))
    before = ck.load_model_weights(path)
    assert ck.resolve_checkpoint(out).name == "step_2"
    assert max(float((after[k] - before[k]).abs().max()) for k in before) < 1e-3  # trained on, not re-initialized


def test_export_then_import_round_trips(tmp_path):
    from mlm.export_hf import export_hf, import_hf

    path = tiny_checkpoint(tmp_path / "ckpt", noise=0.3)
    export_hf(path, tmp_path / "hf")
    back = import_hf(tmp_path / "hf", tmp_path / "back")
    a, tok = ck.load_pretrained(path)
    b, _ = ck.load_pretrained(back)
    assert b.cfg.norm == "pre" and b.cfg.max_seq_len == a.cfg.max_seq_len
    ids = torch.tensor([tok.encode(TEXTS[1]).ids])
    with torch.no_grad():
        assert torch.allclose(a(ids).logits, b(ids).logits, atol=1e-5)


def test_import_refuses_a_non_empty_target_and_a_non_model_folder(bert_folder, tmp_path):
    from mlm.export_hf import import_hf

    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("keep me")
    with pytest.raises(UserError, match="not empty"):
        import_hf(bert_folder, tmp_path / "busy")
    with pytest.raises(UserError, match="no config.json"):
        import_hf(tmp_path / "busy", tmp_path / "new")


# ---------------------------------------------------------------- fine-tuned models

def finetuned_checkpoint(root: Path, task: str, options: dict, **head) -> Path:
    """A fine-tuned checkpoint as mlm.finetune saves it, with random (noisy) encoder and head weights."""
    from mlm.finetune import save_finetuned
    from mlm.tasks.heads import SequenceClassifier, TokenClassifier

    model, tok = ck.load_pretrained(tiny_checkpoint(root / "base", noise=0.3, **options))
    labels = {"sequence_classification": ["bad", "good", "neutral"], "regression": ["score"],
              "token_classification": ["O", "B-PER", "I-PER"]}[task]
    torch.manual_seed(1)
    if task == "token_classification":
        clf = TokenClassifier(model, len(labels))
    else:
        clf = SequenceClassifier(model, len(labels), head.get("pooling", "cls"), 0.1, head.get("transform", "tanh"))
    with torch.no_grad():
        for name, p in clf.named_parameters():
            if not name.startswith("encoder."):
                p.add_(torch.randn_like(p))
    info = {"task": task, "labels": labels, "pooling": getattr(clf, "pooling", "cls"),
            "transform": getattr(clf, "transform_kind", "none"), "dropout": 0.1, "max_seq_len": 64, "stride": 8}
    save_finetuned(root / "ft", 3, clf, tok, "{}\n", info)
    return root / "ft"


@pytest.mark.parametrize("task, options, architecture", [
    ("sequence_classification", {"norm": "pre"}, "RobertaPreLayerNormForSequenceClassification"),
    ("sequence_classification", {"norm": "post"}, "BertForSequenceClassification"),
    ("sequence_classification", {"norm": "post", "position": "rotary"}, "RoFormerForSequenceClassification"),
    ("regression", {"norm": "post"}, "BertForSequenceClassification"),
    ("token_classification", {"norm": "pre"}, "RobertaPreLayerNormForTokenClassification"),
    ("token_classification", {"norm": "post", "position": "rotary"}, "RoFormerForTokenClassification"),
])
def test_finetuned_models_export_with_equal_logits_and_serve_in_pipeline(tmp_path, capsys, monkeypatch, task,
                                                                         options, architecture):
    from mlm.export_hf import main
    from mlm.finetune import load_classifier

    transform = "gelu" if options.get("position") == "rotary" else "tanh"
    source = finetuned_checkpoint(tmp_path, task, options, transform=transform)
    with pytest.raises(SystemExit) as exit_:
        run_cli(main, [str(source), str(tmp_path / "hf")])
    result = json.loads(capsys.readouterr().out)
    assert exit_.value.code == 0 and result["architecture"] == architecture and result["max_abs_diff"] <= 1e-4
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    auto = transformers.AutoModelForTokenClassification if task == "token_classification" \
        else transformers.AutoModelForSequenceClassification
    hf_model = auto.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf", local_files_only=True)
    model, tok, info = load_classifier(source)
    assert type(hf_model).__name__ == architecture
    assert hf_model.config.id2label == dict(enumerate(info["labels"]))
    assert hf_model.config.problem_type == {"regression": "regression", "token_classification": None}.get(
        task, "single_label_classification")
    enc = hf_tok(TEXTS[1:], ["the items are sorted .", "y z"], padding=True, return_tensors="pt")  # pairs, padded
    with torch.no_grad():
        theirs = hf_model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
        mine = model(enc["input_ids"], enc["attention_mask"])
    real = enc["attention_mask"].bool()
    if task == "token_classification":
        theirs, mine = theirs[real], mine[real]
    assert (theirs - mine).abs().max() <= 1e-4

    pipe = transformers.pipeline("token-classification" if task == "token_classification" else "text-classification",
                                 model=str(tmp_path / "hf"))
    text = TEXTS[1]
    ids = torch.tensor([tok.encode(text).ids])
    with torch.no_grad():
        probs = torch.softmax(model(ids), -1)[0]
    if task == "token_classification":  # per sub-token predictions, O left out: ours at the same positions
        for item in pipe(text):
            assert item["entity"] == info["labels"][int(probs[item["index"]].argmax())]
            assert item["score"] == pytest.approx(float(probs[item["index"]].max()), abs=1e-4)
    elif task == "regression":  # the raw score, no sigmoid
        assert pipe(text)[0]["score"] == pytest.approx(float(model(ids)[0, 0].detach()), abs=1e-4)
    else:
        (top,) = pipe(text)
        assert top["label"] == info["labels"][int(probs.argmax())]
        assert top["score"] == pytest.approx(float(probs.max()), abs=1e-4)


@pytest.mark.parametrize("head, options, message", [
    ({"pooling": "mean"}, {}, "head.pooling=mean has no transformers equivalent"),
    ({"transform": "none"}, {}, "dropout -> linear on [CLS]"),
    ({"transform": "gelu"}, {"norm": "pre"}, "head.transform=gelu, but RobertaPreLayerNormForSequenceClassification"),
    ({"transform": "tanh"}, {"activation": "geglu"}, "model.activation=geglu"),
])
def test_heads_without_an_exact_equivalent_are_refused_in_one_line(tmp_path, capsys, head, options, message):
    from mlm.export_hf import main

    source = finetuned_checkpoint(tmp_path, "sequence_classification", options, **head)
    with pytest.raises(SystemExit) as exit_:
        run_cli(main, [str(source), str(tmp_path / "hf")])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and "\n" not in err and message in err
    assert not (tmp_path / "hf").exists()
    # The fine-tuned encoder still exports as a masked LM.
    if "activation" not in options:
        assert run_cli_json(main, [str(source), str(tmp_path / "mlm"), "--masked-lm"], capsys)["max_abs_diff"] <= 1e-4


def run_cli_json(main, argv, capsys) -> dict:
    with pytest.raises(SystemExit) as exit_:
        run_cli(main, argv)
    assert exit_.value.code == 0
    return json.loads(capsys.readouterr().out)
