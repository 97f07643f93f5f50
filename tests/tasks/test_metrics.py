"""Task metrics against hand-computed cases: entity P/R/F1 as seqeval's default mode counts them
(exact type and span; an I- without a B- starts an entity), token accuracy, and regression
correlations (Spearman with tied ranks as scipy computes it)."""
from __future__ import annotations

import pytest

from mlm.tasks.metrics import (constant_regression, entities, entity_metrics, lexical_tagging, majority_tagging,
                               regression_metrics)


def scores(gold, pred):
    m = entity_metrics(gold, pred)
    return m["entity_precision"], m["entity_recall"], m["entity_f1"]


def test_entities_are_read_like_seqeval_default_mode():
    assert entities(["B-PER", "I-PER", "O", "B-LOC"]) == [("PER", 0, 1), ("LOC", 3, 3)]
    assert entities(["O", "I-PER", "I-PER", "O"]) == [("PER", 1, 2)]  # I- after O starts an entity
    assert entities(["B-PER", "I-LOC"]) == [("PER", 0, 0), ("LOC", 1, 1)]  # another type: a new entity
    assert entities(["B-PER", "B-PER", "I-PER"]) == [("PER", 0, 0), ("PER", 1, 2)]  # B- always starts one
    assert entities(["I-PER", "B-PER"]) == [("PER", 0, 0), ("PER", 1, 1)]
    assert entities(["B-MISC-X", "I-MISC-X"]) == [("MISC-X", 0, 1)]  # the type is everything after "B-"
    assert entities(["O", "O"]) == []


def test_exact_spans_and_types_count():
    gold = [["B-PER", "I-PER", "I-PER"]]
    assert scores(gold, gold) == (1.0, 1.0, 1.0)
    # Nested B/I errors: a B- inside the span splits it into two wrong entities.
    assert scores(gold, [["B-PER", "B-PER", "I-PER"]]) == (0.0, 0.0, 0.0)
    # A span one word short is wrong (exact boundaries).
    assert scores(gold, [["B-PER", "I-PER", "O"]]) == (0.0, 0.0, 0.0)
    # An I- that starts the span is read as its start: same entity, counted correct (seqeval default).
    assert scores(gold, [["I-PER", "I-PER", "I-PER"]]) == (1.0, 1.0, 1.0)
    # Type mismatch: right span, wrong type; and a type change inside the span.
    assert scores(gold, [["B-LOC", "I-LOC", "I-LOC"]]) == (0.0, 0.0, 0.0)
    assert scores(gold, [["B-PER", "I-PER", "I-LOC"]]) == (0.0, 0.0, 0.0)


def test_micro_averages_over_sentences_and_token_accuracy():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "B-LOC"]]
    m = entity_metrics(gold, pred)
    # gold: PER, LOC, ORG (3); predicted: PER, ORG, LOC@(1,1) (3); correct: PER, ORG (2)
    assert (m["gold_entities"], m["predicted_entities"], m["correct_entities"]) == (3, 3, 2)
    assert m["entity_precision"] == pytest.approx(2 / 3) and m["entity_recall"] == pytest.approx(2 / 3)
    assert m["entity_f1"] == pytest.approx(2 / 3)
    assert m["token_accuracy"] == pytest.approx(4 / 6)
    # An entity never continues into the next sentence.
    assert entity_metrics([["B-PER"], ["I-PER"]], [["B-PER"], ["I-PER"]])["gold_entities"] == 2


def test_undefined_ratios_are_zero_and_baselines():
    assert scores([["O", "O"]], [["O", "O"]]) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="same sentences"):
        entity_metrics([["O"]], [["O", "O"]])
    train = [["O", "B-PER", "O"], ["O"]]
    test = [["B-PER", "O"]]
    majority = majority_tagging(train, test)
    assert majority["entity_f1"] == 0.0 and majority["token_accuracy"] == 0.5
    # "guido" was a PER once in training: tagged B-PER wherever it appears; unseen words get O.
    lexical = lexical_tagging([["hi", "guido", "."], ["x"]], train, [["guido", "said"]], test)
    assert lexical["entity_f1"] == 1.0


def test_regression_metrics():
    m = regression_metrics([1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 8.0])
    assert m["pearson"] == pytest.approx(1.0) and m["spearman"] == pytest.approx(1.0)
    assert m["mse"] == pytest.approx((1 + 4 + 9 + 16) / 4)
    assert regression_metrics([1, 2, 3], [3, 2, 1])["pearson"] == pytest.approx(-1.0)
    # Monotonic but not linear: Spearman 1, Pearson below.
    curved = regression_metrics([1, 2, 3, 4], [1, 4, 9, 16])
    assert curved["spearman"] == pytest.approx(1.0) and curved["pearson"] == pytest.approx(0.9843, abs=1e-4)
    # Ties share their average rank (scipy.stats.spearmanr gives 0.9486832980505138).
    assert regression_metrics([1, 2, 2, 3], [1, 2, 3, 4])["spearman"] == pytest.approx(0.9486832980505138)
    # A constant prediction has no correlation (0, not NaN), and is the constant baseline.
    flat = constant_regression([1.0, 3.0], [0.0, 4.0])
    assert flat["pearson"] == 0.0 and flat["spearman"] == 0.0 and flat["mse"] == pytest.approx(4.0)
