"""Word / sub-token alignment for token classification: a word's tag goes to its first sub-token and
the other sub-tokens are ignored; long sentences become windows that predict every word once;
predictions map back to one tag per word, also for an entity cut by a window boundary."""
from __future__ import annotations

import pytest

from mlm.tasks.encoding import IGNORE, encode_words, plan_windows, words_from_rows
from mlm.tasks.metrics import entity_metrics
from mlm.tokenizer import CLS, MASK, SEP, text_encoder
from helpers import tiny_tokenizer

LONG_WORD = "antidisestablishmentarianism"


def pieces(tok, word: str) -> list[int]:
    return text_encoder(tok).encode([word], is_pretokenized=True, add_special_tokens=False).ids


def test_first_sub_token_gets_the_tag_the_rest_is_ignored():
    tok = tiny_tokenizer()
    words = ["the", LONG_WORD, "list", MASK]
    assert len(pieces(tok, LONG_WORD)) > 1
    out = encode_words(tok, [words], [[0, 1, 2, 3]], max_len=64, stride=8)
    (row,), (labels,) = out.rows, out.labels
    # The ids are the tokenizer's own encoding of the word list ([CLS] words [SEP]); "[MASK]" stays text.
    assert row == text_encoder(tok).encode(words, is_pretokenized=True).ids
    assert row[0] == tok.token_to_id(CLS) and row[-1] == tok.token_to_id(SEP) and tok.token_to_id(MASK) not in row
    expected = [IGNORE]
    for tag, word in enumerate(words):
        n = len(pieces(tok, word))
        expected += [tag] + [IGNORE] * (n - 1)
    assert labels == expected + [IGNORE]
    assert out.words == [[0, 1, 2, 3]] and [labels[p] for p in out.positions[0]] == [0, 1, 2, 3]


def test_windows_tile_the_sentence_with_context():
    assert plan_windows([1] * 10, budget=4, stride=1) == [(0, 0, 3, 4), (2, 3, 5, 6), (4, 5, 7, 8), (6, 7, 10, 10)]
    # Context is whole words: a neighbour that does not fit in `stride` tokens is left out.
    assert plan_windows([2, 5, 1], budget=5, stride=2) == [(0, 0, 1, 1), (1, 1, 2, 2), (2, 2, 3, 3)]
    tok = tiny_tokenizer()
    words = (f"the {LONG_WORD} returns a new list of items from the iterable . " * 6).split()
    tags = [i % 3 for i in range(len(words))]
    out = encode_words(tok, [words], [tags], max_len=16, stride=4)
    assert len(out.rows) > 3 and all(len(r) <= 16 for r in out.rows)
    predicted = sorted(w for ws in out.words for w in ws)
    assert predicted == list(range(len(words)))  # every word exactly once, none truncated away
    for row_labels, ws, positions in zip(out.labels, out.words, out.positions):
        assert [row_labels[p] for p in positions] == [tags[w] for w in ws]
        assert sum(label != IGNORE for label in row_labels) == len(ws)  # context words are not labelled
    assert any(out.words[r][0] > 0 and out.labels[r][1] == IGNORE for r in range(1, len(out.rows)))  # left context
    # Predictions equal to the labels at the predicted positions give back the tags, word by word.
    gold_rows = [[row_labels[p] for p in positions] for row_labels, positions in zip(out.labels, out.positions)]
    assert words_from_rows(out, gold_rows, fill=0) == [tags]


def test_an_entity_cut_by_a_window_boundary_is_joined_again():
    tok = tiny_tokenizer()
    words = ("a " * 40).split()
    out = encode_words(tok, [words], None, max_len=10, stride=2)
    # The last word of the first window and the first of the second: one PER entity in the gold tags.
    w = out.words[0][-1]
    assert out.words[1][0] == w + 1
    names = ["O", "B-PER", "I-PER"]
    gold = [["B-PER" if i == w else "I-PER" if i == w + 1 else "O" for i in range(len(words))]]

    def tags_from(first: str, second: str) -> list[list[str]]:
        rows = [[0] * len(ws) for ws in out.words]
        rows[0][-1], rows[1][0] = names.index(first), names.index(second)
        return [[names[k] for k in sentence] for sentence in words_from_rows(out, rows, fill=0)]

    assert entity_metrics(gold, tags_from("B-PER", "I-PER"))["entity_f1"] == 1.0
    # The second window starting a new entity splits it: two wrong entities, F1 0 (P 0/2, R 0/1).
    m = entity_metrics(gold, tags_from("B-PER", "B-PER"))
    assert (m["entity_f1"], m["predicted_entities"], m["gold_entities"]) == (0.0, 2, 1)


def test_a_word_longer_than_a_window_is_clipped_not_dropped():
    tok = tiny_tokenizer()
    n = len(pieces(tok, LONG_WORD))
    out = encode_words(tok, [["x", LONG_WORD, "y"]], [[0, 1, 2]], max_len=n, stride=0)
    assert out.clipped_words == 1 and sorted(w for ws in out.words for w in ws) == [0, 1, 2]
    with pytest.raises(ValueError, match="at least 3"):
        encode_words(tok, [["x"]], None, max_len=2, stride=0)
