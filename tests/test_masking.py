"""mlm.masking: the strategies as pure functions (statistics over real text are in test_collate.py)."""
from __future__ import annotations

import numpy as np

from mlm.masking import corrupt, inclusion_probabilities, select_tokens, word_index


def test_word_index_starts_words_at_boundaries_and_skips_tokens_without_a_word():
    ids = np.array([[2, 10, 11, 12, 13, 3]])
    eligible = np.array([[False, True, True, True, True, False]])
    word_ids = np.array([[np.nan, 0, 0, np.nan, 1, np.nan]])
    in_word, starts, word = word_index(ids, eligible, word_ids, None)
    assert in_word.tolist() == [[False, True, True, False, True, False]]
    assert starts.tolist() == [[False, True, False, False, True, False]]
    assert word[[1, 2, 4]].tolist() == [0, 0, 1]


def test_word_index_from_the_continuation_table():
    is_continuation = np.zeros(20, dtype=bool)
    is_continuation[11] = True  # "##ing"
    ids = np.array([[10, 11, 12]])
    _, starts, word = word_index(ids, np.ones((1, 3), dtype=bool), None, is_continuation)
    assert starts.tolist() == [[True, False, True]] and word.tolist() == [0, 0, 1]


def test_inclusion_probabilities_sum_to_the_target_and_cap_at_one():
    w = np.array([[10.0, 1.0, 1.0, 1.0, 0.0]])
    p = inclusion_probabilities(w, np.array([2.0]))
    assert np.isclose(p.sum(), 2.0) and p[0, 0] == 1.0 and np.allclose(p[0, 1:4], 1 / 3) and p[0, 4] == 0.0


def test_exact_count_selects_round_p_times_eligible():
    rng = np.random.default_rng(0)
    eligible = np.ones((4, 50), dtype=bool)
    eligible[1, 25:] = False
    selected = select_tokens(rng, eligible, 0.15, exact_count=True)
    assert selected.sum(axis=1).tolist() == [8, 4, 8, 8] and not (selected & ~eligible).any()


def test_corrupt_masks_replaces_or_keeps_and_draws_replacements_from_the_allowed_ids_only():
    rng = np.random.default_rng(0)
    ids = np.full((1, 30_000), 7, dtype=np.int64)
    selected = np.ones_like(ids, dtype=bool)
    corrupt(rng, ids, selected, None, mask_token_id=4, replacements=np.array([100, 101]),
            mask_replace_prob=0.8, random_replace_prob=0.1)
    shares = {v: float(np.mean(ids == v)) for v in (4, 7)}
    assert abs(shares[4] - 0.8) < 0.015 and abs(shares[7] - 0.1) < 0.01  # SE 0.0023 / 0.0017
    assert set(np.unique(ids)) <= {4, 7, 100, 101}
