"""mlm.tokenizer: the deterministic kinds give the same file in every process; special ids; the text
encoder; char and byte_bpe round trips; extending a tokenizer keeps every old id."""
from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO, topic_texts
from mlm.errors import UserError
from mlm.tokenizer import (DETERMINISTIC_KINDS, RECIPES, UNK, extend_tokenizer, replaced_pieces, special_token_ids,
                           text_encoder, tokenizer_kind, train_tokenizer, word_counts)

TRAIN_IN_A_FRESH_PROCESS = """
import inspect, json.decoder, sys, pydoc_data.topics as t
from mlm.tokenizer import train_tokenizer
texts = [t.topics[k] for k in sorted(t.topics)][:150] + [inspect.getsource(json.decoder)]
train_tokenizer(texts, int(sys.argv[2]), sys.argv[3]).save(sys.argv[1])
"""
PROTEIN = "MVLSPADKTNVKAAWGKVGAHAGEYGAEALERMFLSFPTTKTYFPHFDLSHGSAQVKGHGKKVADALTNAVAHVDDMPNALSALSDLHAHKL"


@pytest.mark.parametrize("kind", DETERMINISTIC_KINDS)
def test_the_deterministic_kinds_are_byte_identical_across_processes(tmp_path, kind):
    """tokenizers' WordPiece / ##-BPE / Unigram trainers give another vocabulary in each process
    (huggingface/tokenizers#1794); the kinds listed as deterministic must not, or two users' runs differ."""
    files = []
    for i in range(3):
        path = tmp_path / f"tok{i}.json"
        subprocess.run([sys.executable, "-c", TRAIN_IN_A_FRESH_PROCESS, str(path), "60" if kind == "char" else "1500",
                        kind], check=True, cwd=REPO, env={"PYTHONPATH": str(REPO), "PYTHONHASHSEED": str(i + 1)})
        files.append(path.read_bytes())
    assert files[0] == files[1] == files[2]
    assert set(DETERMINISTIC_KINDS) == {"metaspace_bpe", "char", "byte_bpe"}


@pytest.mark.parametrize("kind", sorted(RECIPES))
def test_every_kind_has_the_bert_specials_and_template(kind):
    tok = train_tokenizer(topic_texts(40), 400, kind)
    assert special_token_ids(tok) == sorted(tok.token_to_id(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"))
    ids = tok.encode("return the value").ids
    assert ids[0] == tok.token_to_id("[CLS]") and ids[-1] == tok.token_to_id("[SEP]")


def test_the_default_marks_word_starts_so_words_and_punctuation_stay_apart():
    tok = train_tokenizer(topic_texts(60), 600)
    pieces = tok.encode("foo.bar(x)", add_special_tokens=False).tokens
    assert "".join(pieces).replace("▁", "") == "foo.bar(x)"
    assert sum(p.startswith("▁") for p in pieces) == 6  # foo . bar ( x ): six words, as WordPiece splits them


def test_the_text_encoder_reads_a_literal_mask_as_text_and_leaves_the_tokenizer_alone():
    tok = train_tokenizer(topic_texts(40), 400)
    mask_id = tok.token_to_id("[MASK]")
    assert mask_id in tok.encode("a [MASK] b").ids
    assert mask_id not in text_encoder(tok).encode("a [MASK] b").ids
    assert len(text_encoder(tok, max_length=3).encode("one two three four five").ids) == 3
    assert mask_id in tok.encode("a [MASK] b").ids  # the original is unchanged


def test_char_tokenizer_round_trips_a_protein_exactly():
    tok = train_tokenizer([PROTEIN] * 3 + ["ACDEFGHIKLMNPQRSTVWY", "XX*", "mkv"], 27, "char")
    assert tokenizer_kind(tok) == "char"
    enc = text_encoder(tok).encode(PROTEIN, add_special_tokens=False)
    assert enc.tokens == list(PROTEIN)  # one token per residue
    assert tok.decode(enc.ids) == PROTEIN
    assert tok.get_vocab_size() == 27  # capped: 5 specials + the 22 most frequent characters (20 residues, X, *)
    assert tok.encode("MKVmkv", add_special_tokens=False).tokens == ["M", "K", "V"] + ["[UNK]"] * 3  # case kept


def test_byte_bpe_round_trips_a_python_file_exactly():
    """decode(encode(file)) == file for a real standard-library module: indentation, tabs, blank lines."""
    import json.decoder
    import textwrap

    source = Path(json.decoder.__file__).read_text(encoding="utf-8")
    tok = train_tokenizer([inspect.getsource(json), source[:5000]], 800, "byte_bpe")
    for text in (source, "def f(x):\n\tif x:\n\t\treturn  x\n\n\n", textwrap.dedent("""
            class A:  # é, 日本, emoji 🐍
                x = '[MASK]'   \r
            """)):
        ids = text_encoder(tok).encode(text, add_special_tokens=False).ids
        assert tok.decode(ids) == text
        assert tok.token_to_id(UNK) not in ids  # every byte is in the alphabet
    pieces = tok.encode("\n        return", add_special_tokens=False).tokens
    assert pieces[0].startswith("Ċ") and "ĠĠ" in pieces[0]  # a newline and its indent are tokens


# ------------------------------------------------------------------ extending a vocabulary

DOMAIN = ["The pneumonia resolved; pneumonia recurs. Thrombocytopenia and pneumonia again."] * 30 + \
    ["Severe thrombocytopenia was treated."] * 10


@pytest.mark.parametrize("kind", ["metaspace_bpe", "byte_bpe", "wordpiece"])
def test_extending_keeps_every_old_id_and_makes_the_most_split_words_one_token(kind):
    old = train_tokenizer(topic_texts(60), 600, kind)
    new = extend_tokenizer(old, DOMAIN, 40)
    old_vocab, new_vocab = old.get_vocab(), new.get_vocab()
    assert all(new_vocab[t] == i for t, i in old_vocab.items())
    assert len(old_vocab) < len(new_vocab) <= len(old_vocab) + 40
    assert sorted(set(new_vocab.values()) - set(old_vocab.values())) == list(range(len(old_vocab), len(new_vocab)))
    pneumonia = new.encode(" pneumonia", add_special_tokens=False).tokens
    assert len(pneumonia) == 1 and len(old.encode(" pneumonia", add_special_tokens=False).tokens) > 1
    counts = word_counts(old, DOMAIN)
    assert counts[pneumonia[0]] == 90  # the most frequent word the old tokenizer splits
    text = "pneumonia and thrombocytopenia: " + topic_texts(61)[60][:300]
    assert new.decode(new.encode(text).ids) == old.decode(old.encode(text).ids)  # same text back
    pieces = replaced_pieces(old, new)
    assert set(pieces) == set(new_vocab.values()) - set(old_vocab.values())
    new_id = new.token_to_id(pneumonia[0])
    assert [old.id_to_token(i) for i in pieces[new_id]] == [t.value for t in old.model.tokenize(pneumonia[0])]


def test_extension_is_deterministic_and_refused_where_it_cannot_work():
    old = train_tokenizer(topic_texts(60), 600)
    assert extend_tokenizer(old, DOMAIN, 25).to_str() == extend_tokenizer(old, list(DOMAIN), 25).to_str()
    char = train_tokenizer([PROTEIN], 30, "char")
    with pytest.raises(UserError, match="char.*cannot be extended by subwords"):
        extend_tokenizer(char, [PROTEIN], 10)
    with pytest.raises(UserError, match="unigram"):
        extend_tokenizer(train_tokenizer(topic_texts(40), 400, "unigram"), DOMAIN, 10)
    shuffled = json.loads(old.to_str())
    vocab = shuffled["model"]["vocab"]
    a, b = list(vocab)[10:12]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    from tokenizers import Tokenizer
    with pytest.raises(UserError, match="does not keep the old ids"):
        replaced_pieces(old, Tokenizer.from_str(json.dumps(shuffled)))
    assert [tokenizer_kind(train_tokenizer(topic_texts(20), 300, k)) for k in RECIPES] == list(RECIPES)
