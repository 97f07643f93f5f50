"""Masking strategies as pure functions of (generator, padded batch): which tokens to predict, and how
to corrupt them (80/10/10). `mlm.collate.MLMCollator` calls them; a new strategy is one function here
and one branch in the collator.

Every function works on the whole padded (B, L) batch with vectorised numpy, never a loop per row.
`eligible` (B, L) is True where a token may be selected: not special, not padding.
"""
from __future__ import annotations

import numpy as np

# SpanBERT: span lengths, in words, follow Geometric(0.2) restricted to 1..10 (mean 3.8 words).
SPAN_GEOMETRIC_P = 0.2
SPAN_MAX_WORDS = 10
SPAN_PMF = SPAN_GEOMETRIC_P * (1 - SPAN_GEOMETRIC_P) ** np.arange(SPAN_MAX_WORDS)
SPAN_PMF /= SPAN_PMF.sum()
SPAN_CDF = np.cumsum(SPAN_PMF)
SPAN_CDF[-1] = 1.0
SPAN_MEAN_WORDS = float(np.dot(np.arange(1, SPAN_MAX_WORDS + 1), SPAN_PMF))
# Mean span length once cut to a row of w words, for w = 0..10 (E[min(l, w)] = sum of P(l >= k), k <= w).
SPAN_MEAN_IN_ROW = np.r_[1.0, np.cumsum(1.0 - np.r_[0.0, SPAN_CDF[:-1]])]


# ---------------------------------------------------------------- token and weighted selection

def select_tokens(rng: np.random.Generator, eligible: np.ndarray, p: float, weights: np.ndarray | None = None,
                  exact_count: bool = False) -> np.ndarray:
    """Token selection (weights None) or weighted selection, by independent draws or, with
    `exact_count`, exactly round(p * eligible) tokens per row. Returns the (B, L) selection."""
    if weights is None and not exact_count:
        return eligible & (rng.random(eligible.shape, dtype=np.float32) < p)
    n_eligible = eligible.sum(axis=1)  # (B,)
    if weights is None:  # exact count, uniform: the k smallest random keys win
        keys = rng.random(eligible.shape)
    else:
        w = checked_weights(weights, eligible)
        if not exact_count:
            return eligible & (rng.random(eligible.shape) < inclusion_probabilities(w, p * n_eligible))
        # Exact count, weighted: keys ~ Exponential(rate w); the k smallest are a weighted draw
        # without replacement (Efraimidis-Spirakis), so heavier tokens come first.
        with np.errstate(divide="ignore"):
            keys = -np.log1p(-rng.random(eligible.shape)) / w
    keys[~eligible] = np.inf
    k = np.rint(p * n_eligible).astype(np.int64)  # (B,), never above n_eligible
    order = np.argsort(keys, axis=1)  # (B, L)
    selected = np.zeros(eligible.shape, dtype=bool)
    np.put_along_axis(selected, order, np.arange(eligible.shape[1]) < k[:, None], axis=1)
    return selected


def checked_weights(weights: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """Weights of eligible tokens, floored at 1e-9 of the row maximum so a zero weight still has a
    (tiny) chance when the ratio cannot be met otherwise; 0 for ineligible tokens."""
    w = np.where(eligible, weights, 0.0)  # (B, L)
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError("weights must be finite and >= 0 (e.g. surprisal in nats); fix the 'weights' field")
    top = w.max(axis=1, keepdims=True)
    floor = np.where(top > 0, top * 1e-9, 1.0)
    return np.where(eligible, np.maximum(w, floor), 0.0)


def inclusion_probabilities(w: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-token p_i = min(1, c * w_i) with c solved per row so that sum(p_i) = target.

    If the heaviest m tokens are capped at 1, c = (target - m) / (sum of the other weights); the
    right m is the smallest for which the heaviest uncapped token stays <= 1. Vectorised over rows
    with one sort: O(B * L log L).
    """
    ws = -np.sort(-w, axis=1)  # (B, L) descending; ineligible (0) last
    tail = np.cumsum(ws[:, ::-1], axis=1)[:, ::-1]  # tail[:, m] = sum(ws[:, m:]), summed small-first
    m = np.arange(w.shape[1])
    with np.errstate(divide="ignore", invalid="ignore"):
        c = (target[:, None] - m) / tail  # (B, L): scale if the first m are capped
        fits = (m <= target[:, None]) & (c * ws <= 1.0 + 1e-12) & (tail > 0)
    best = np.argmax(fits, axis=1)  # (B,) first m that fits
    scale = np.take_along_axis(c, best[:, None], axis=1)  # (B, 1)
    scale[~fits.any(axis=1)] = 0.0  # rows without eligible tokens
    return np.minimum(1.0, scale * w)


# ---------------------------------------------------------------- words and spans

def word_index(ids: np.ndarray, eligible: np.ndarray, word_ids: np.ndarray | None,
               is_continuation: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(in_word, starts, word): the eligible tokens that belong to a word (B, L), word starts (B, L),
    and for each token the flat index of its word across the batch (B*L,).

    A word starts at an eligible token whose predecessor is ineligible or belongs to another word:
    by `word_ids` (NaN = no word) when given, else by the vocabulary's continuation table. A token
    whose word id is None/-1 belongs to no word and is never selected by the word strategies, as in
    transformers. One pass, O(B*L).
    """
    if word_ids is not None:
        in_word = eligible & ~np.isnan(word_ids)
        new_word = np.ones_like(in_word)
        new_word[:, 1:] = word_ids[:, 1:] != word_ids[:, :-1]  # NaN (no word) differs from everything
    elif is_continuation is not None:
        in_word = eligible
        new_word = ~is_continuation[ids]
    else:
        raise ValueError("needs word boundaries: give examples a 'word_ids' field (a fast tokenizer's "
                         "encoding.word_ids), or pass is_continuation= (from_tokenizer derives it for WordPiece "
                         "'##', BPE and Metaspace/ByteLevel vocabularies)")
    previous_in_word = np.zeros_like(in_word)
    previous_in_word[:, 1:] = in_word[:, :-1]
    starts = in_word & (new_word | ~previous_in_word)  # (B, L)
    word = np.cumsum(starts.reshape(-1)) - 1  # (B*L,); valid where in_word
    return in_word, starts, word


def select_words(rng: np.random.Generator, in_word: np.ndarray, word: np.ndarray, p: float) -> np.ndarray:
    """Select each word with probability p as a unit: every token's marginal probability stays p."""
    n_words = int(word[-1]) + 1 if word.size else 0
    if n_words == 0:
        return np.zeros_like(in_word)
    chosen = rng.random(n_words, dtype=np.float32) < p  # (n_words,)
    return in_word & chosen[word].reshape(in_word.shape)


def select_spans(rng: np.random.Generator, in_word: np.ndarray, starts: np.ndarray, word: np.ndarray,
                 p: float) -> tuple[np.ndarray, np.ndarray | None]:
    """SpanBERT spans laid out on each row's words; returns the selection and per-token treatment draws.

    The number of spans per row is drawn so that E[words covered] = p * words; spans are then
    placed uniformly at random without overlap and with at least one unselected word between
    them, so every selected run is exactly one span with its drawn length (a span longer than
    its row is cut to the row; spans that no longer fit, only at ratios above ~0.75, are dropped).
    """
    n_words = starts.sum(axis=1)  # (B,)
    lengths, active = _span_lengths(rng, n_words, p)
    if lengths is None:
        return np.zeros_like(in_word), None
    batch, most = lengths.shape
    count = active.sum(axis=1)  # (B,)
    slack = n_words - lengths.sum(axis=1) - np.maximum(count - 1, 0)  # free words to scatter, (B,)
    # Uniform offsets, sorted: how much slack lies before each span. Inactive spans sort last.
    offsets = np.where(active, rng.random((batch, most)), 2.0)
    offsets.sort(axis=1)
    offsets = np.floor(offsets * (slack[:, None] + 1)).astype(np.int64)
    before = np.cumsum(lengths, axis=1) - lengths + np.arange(most)  # words of earlier spans + gaps
    first = np.cumsum(n_words) - n_words  # (B,) flat index of each row's first word
    begin = (first[:, None] + offsets + before)[active]  # (n_spans,) flat first word of each span
    end = begin + lengths[active]
    total_words = int(n_words.sum())
    begins = np.zeros(total_words + 1, dtype=np.int64)
    ends = np.zeros(total_words + 1, dtype=np.int64)
    begins[begin] = 1
    ends[end] = 1
    span_of_word = np.cumsum(begins) - 1  # (W+1,)
    inside = (span_of_word + 1 - np.cumsum(ends)) > 0  # (W+1,) word lies in a span
    word_at = np.where(in_word.reshape(-1), word, total_words)  # (B*L,), index W = "not a word"
    selected = inside[word_at].reshape(in_word.shape)
    per_span = rng.random(begin.size)  # one 80/10/10 draw per span
    treatment = per_span[span_of_word[word_at[selected.reshape(-1)]]]
    return selected, treatment


def _span_lengths(rng: np.random.Generator, n_words: np.ndarray,
                  p: float) -> tuple[np.ndarray | None, np.ndarray]:
    """(B, S) span lengths in words (0 for inactive spans) and which spans are active; None when no
    row gets a span."""
    batch = n_words.shape[0]
    mean_length = SPAN_MEAN_IN_ROW[np.minimum(n_words, SPAN_MAX_WORDS)]  # short rows cut spans short
    target = p * n_words / mean_length  # expected number of spans, (B,)
    n_spans = np.floor(target).astype(np.int64)
    n_spans += rng.random(batch) < target - n_spans
    most = int(n_spans.max())
    if most == 0:
        return None, np.zeros((batch, 0), dtype=bool)
    lengths = np.searchsorted(SPAN_CDF, rng.random((batch, most)), side="right") + 1
    lengths = np.minimum(lengths, n_words[:, None])
    active = np.arange(most) < n_spans[:, None]
    lengths[~active] = 0
    needed = np.cumsum(lengths, axis=1) + np.cumsum(active, axis=1) - 1  # words incl. one-word gaps
    active &= needed <= n_words[:, None]
    lengths[~active] = 0
    return lengths, active


# ---------------------------------------------------------------- 80/10/10

def corrupt(rng: np.random.Generator, ids: np.ndarray, selected: np.ndarray, treatment: np.ndarray | None,
            mask_token_id: int, replacements: np.ndarray, mask_replace_prob: float,
            random_replace_prob: float) -> None:
    """Apply mask / random / keep to the selected positions of `ids`, in place.

    `treatment` holds one uniform draw per selected position (row-major order); spans pass the
    same draw for all their tokens. Random ids come only from `replacements` (the non-special ids).
    """
    flat = ids.reshape(-1)  # view
    where = np.flatnonzero(selected)
    if treatment is None:
        treatment = rng.random(where.size)
    flat[where[treatment < mask_replace_prob]] = mask_token_id
    upper = mask_replace_prob + random_replace_prob
    randomised = where[(treatment >= mask_replace_prob) & (treatment < upper)]
    if randomised.size:
        flat[randomised] = replacements[rng.integers(0, replacements.size, randomised.size)]
