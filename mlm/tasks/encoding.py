"""Labelled text to token ids, through `mlm.tokenizer.text_encoder` (a literal "[MASK]" stays text).

Sequence tasks: one row per text (or text pair) with the tokenizer's template, truncated.

Token tasks: each sentence's word list is encoded with its word boundaries kept (pre-tokenized
input, `encoding.word_ids`), and a word's tag goes to its *first* sub-token; the other sub-tokens
get IGNORE (-100), so they count neither in the loss nor in the prediction. A sentence longer
than the model is never truncated: it is cut into windows of whole words, each with up to
`stride` tokens of context on either side that it does not predict, so every word is predicted
exactly once, by a window that sees it with context. `words_from_rows` maps the rows' predictions
back to one tag per word.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from mlm.tokenizer import CLS, SEP, text_encoder, token_id

IGNORE = -100  # the label of a position that is not predicted (sub-tokens after the first, context)


def encode_texts(tokenizer: Any, texts: Sequence[str], pairs: Sequence[str] | None, max_len: int) -> list[list[int]]:
    """Token ids with the tokenizer's template ([CLS] a [SEP], or [CLS] a [SEP] b [SEP]), truncated to
    `max_len`; a literal "[SEP]" in the text is text, as in the pretraining data."""
    encoder = text_encoder(tokenizer, max_length=max_len)
    inputs = list(zip(texts, pairs)) if pairs is not None else list(texts)
    return [e.ids for e in encoder.encode_batch(inputs)]


@dataclass
class WordRows:
    """Model rows for tagged sentences: `rows[r]` token ids ([CLS] ... [SEP]), `labels[r]` one label
    per token (IGNORE where not predicted); row r predicts words `words[r]` of sentence `sentence[r]`
    at token positions `positions[r]` (each word's first sub-token)."""
    rows: list[list[int]]
    labels: list[list[int]]
    sentence: list[int]
    words: list[list[int]]
    positions: list[list[int]]
    num_sentences: int
    word_counts: list[int]
    untokenized_words: int = 0  # words with no sub-token at all (predicted O, still scored)
    clipped_words: int = 0  # words with more sub-tokens than a window holds (their tail dropped)


def plan_windows(counts: Sequence[int], budget: int, stride: int) -> list[tuple[int, int, int, int]]:
    """Cut a sentence of words with `counts[i]` sub-tokens (each ≤ budget) into windows of at most
    `budget` tokens: (context start, first predicted, end predicted, context end) word indices.
    Predicted ranges tile the sentence; each window keeps up to `stride` tokens of whole-word context
    on each side (the first and the last window need none on their outer side)."""
    n, out, start = len(counts), [], 0
    while start < n:
        left, context = start, 0
        room = min(stride, budget - counts[start])
        while left > 0 and context + counts[left - 1] <= room:
            left -= 1
            context += counts[left]
        end, used = start, context
        while end < n and used + counts[end] <= budget:
            used += counts[end]
            end += 1
        stop = end
        if end < n:  # leave up to `stride` tokens of right context, predicting at least one word
            right = 0
            while stop - 1 > start and right + counts[stop - 1] <= stride:
                stop -= 1
                right += counts[stop]
        out.append((left, start, stop, end))
        start = stop
    return out


def encode_words(tokenizer: Any, sentences: Sequence[Sequence[str]], tags: Sequence[Sequence[int]] | None,
                 max_len: int, stride: int) -> WordRows:
    """Rows for tagged sentences (tags as label indices; None for unlabelled text to predict), each
    at most `max_len` tokens with [CLS] and [SEP]; `stride` tokens of context kept around each window
    (capped at a quarter of the window so that every window predicts a good share of its words)."""
    budget = max_len - 2
    if budget < 1:
        raise ValueError(f"max_len must be at least 3 for [CLS] word [SEP], got {max_len}")
    stride = max(0, min(stride, budget // 4))
    cls_id, sep_id = token_id(tokenizer, CLS), token_id(tokenizer, SEP)
    encoder = text_encoder(tokenizer)
    encodings = encoder.encode_batch([list(s) for s in sentences], is_pretokenized=True, add_special_tokens=False)
    out = WordRows([], [], [], [], [], len(sentences), [len(s) for s in sentences])
    for s, enc in enumerate(encodings):
        pieces: list[list[int]] = [[] for _ in sentences[s]]
        for tid, word in zip(enc.ids, enc.word_ids):
            if word is not None:
                pieces[word].append(tid)
        out.untokenized_words += sum(1 for p in pieces if not p)
        out.clipped_words += sum(1 for p in pieces if len(p) > budget)
        pieces = [p[:budget] for p in pieces]
        counts = [len(p) for p in pieces]
        for left, start, stop, end in plan_windows(counts, budget, stride):
            ids, labels, words, positions = [cls_id], [IGNORE], [], []
            for w in range(left, end):
                if not pieces[w]:
                    continue
                predicted = start <= w < stop
                if predicted:
                    words.append(w)
                    positions.append(len(ids))
                ids.extend(pieces[w])
                first = tags[s][w] if predicted and tags is not None else IGNORE
                labels.extend([first] + [IGNORE] * (len(pieces[w]) - 1))
            ids.append(sep_id)
            labels.append(IGNORE)
            out.rows.append(ids)
            out.labels.append(labels)
            out.sentence.append(s)
            out.words.append(words)
            out.positions.append(positions)
    return out


def words_from_rows(encoded: WordRows, row_predictions: Sequence[Sequence[int]], fill: int) -> list[list[int]]:
    """One predicted label per word of every sentence, from each row's predictions at its
    `positions`; a word no row predicts (it has no sub-token) gets `fill` (the O label)."""
    out = [[fill] * n for n in encoded.word_counts]
    for r, predicted in enumerate(row_predictions):
        sentence = out[encoded.sentence[r]]
        for word, label in zip(encoded.words[r], predicted):
            sentence[word] = int(label)
    return out
