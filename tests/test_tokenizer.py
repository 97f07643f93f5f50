"""mlm.tokenizer: the default tokenizer is the same file in every process; special ids; the text encoder."""
from __future__ import annotations

import subprocess
import sys

import pytest

from helpers import REPO, topic_texts
from mlm.tokenizer import DETERMINISTIC_KINDS, RECIPES, special_token_ids, text_encoder, train_tokenizer

TRAIN_IN_A_FRESH_PROCESS = """
import sys, pydoc_data.topics as t
from mlm.tokenizer import train_tokenizer
texts = [t.topics[k] for k in sorted(t.topics)][:150]
train_tokenizer(texts, 1500).save(sys.argv[1])
"""


def test_the_default_tokenizer_is_byte_identical_across_processes(tmp_path):
    """tokenizers' WordPiece / ##-BPE trainers give another vocabulary in each process
    (huggingface/tokenizers#1794); the default must not, or two users' runs differ."""
    files = []
    for i in range(2):
        path = tmp_path / f"tok{i}.json"
        subprocess.run([sys.executable, "-c", TRAIN_IN_A_FRESH_PROCESS, str(path)], check=True, cwd=REPO,
                       env={"PYTHONPATH": str(REPO), "PYTHONHASHSEED": str(i + 1)})
        files.append(path.read_bytes())
    assert files[0] == files[1]
    assert "metaspace_bpe" in DETERMINISTIC_KINDS


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
