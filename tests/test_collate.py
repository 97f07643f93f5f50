"""Specification of mlm.collate.MLMCollator.

Statistics run over real text (the stdlib's pydoc topics, tokenized with our own trained
tokenizer) with fixed seeds, so every test is deterministic; the tolerances are several standard
errors wide yet tight enough that an off-by-a-rule implementation fails.
"""
from __future__ import annotations

import inspect
import io
import json.decoder
import pickle
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydoc_data.topics
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from torch.utils.data import DataLoader

import mlm.collate
from mlm.collate import IGNORE_INDEX, SPAN_MAX_WORDS, SPAN_MEAN_WORDS, STRATEGIES, MLMCollator
from mlm.tokenizer import MASK, PAD, special_token_ids, train_tokenizer

WIDTH = 128
BATCH = 32
MIN_ELIGIBLE = 100_000  # every statistic is measured over at least this many maskable tokens
VOCAB = 1000  # small enough that about one token in five continues a word ("##")


# ---------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return list(pydoc_data.topics.topics.values())


@pytest.fixture(scope="module")
def tok(texts: list[str]) -> Tokenizer:
    return train_tokenizer(texts, VOCAB)


def windows_of(tok: Tokenizer, texts: list[str]) -> list[dict]:
    """[CLS] + 126 tokens + [SEP] windows with their word ids (None on specials)."""
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    body = WIDTH - 2
    out = []
    for enc in tok.encode_batch(texts, add_special_tokens=False):
        for start in range(0, len(enc.ids) - body + 1, body):
            stop = start + body
            out.append({"input_ids": [cls_id] + enc.ids[start:stop] + [sep_id],
                        "word_ids": [None] + enc.word_ids[start:stop] + [None]})
    return out


@pytest.fixture(scope="module")
def windows(tok: Tokenizer, texts: list[str]) -> list[dict]:
    return windows_of(tok, texts)


@pytest.fixture(scope="module")
def ragged(tok: Tokenizer, windows: list[dict]) -> list[dict]:
    """Every window cut in two at a random point: lengths from 3 to 127, so batches need padding."""
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    rng = np.random.default_rng(0)
    out = []
    for window in windows:
        ids, words = window["input_ids"][1:-1], window["word_ids"][1:-1]
        cut = int(rng.integers(1, len(ids)))
        for part in (slice(0, cut), slice(cut, None)):
            out.append({"input_ids": [cls_id] + ids[part] + [sep_id], "word_ids": [None] + words[part] + [None]})
    return out


@pytest.fixture(scope="module")
def specials(tok: Tokenizer) -> np.ndarray:
    return np.array(special_token_ids(tok))


@dataclass
class Masked:
    """A corpus pushed through a collator, stacked to (N, WIDTH)."""
    original: np.ndarray  # ids before masking, pad id at padding
    inputs: np.ndarray
    labels: np.ndarray
    attention: np.ndarray
    word_ids: np.ndarray  # float, NaN for specials and padding

    @property
    def selected(self) -> np.ndarray:
        return self.labels != IGNORE_INDEX


def run(collator: MLMCollator, examples: list[dict], passes: int = 1, with_word_ids: bool = False,
        weights: list[list[float]] | None = None) -> Masked:
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("original", "inputs", "labels", "attention", "word_ids")}
    pad_id = collator.pad_token_id
    for _ in range(passes):
        for start in range(0, len(examples), BATCH):
            chunk = examples[start:start + BATCH]
            if weights is not None:
                feed = [{"input_ids": e["input_ids"], "weights": w}
                        for e, w in zip(chunk, weights[start:start + BATCH])]
            elif with_word_ids:
                feed = [{"input_ids": e["input_ids"], "word_ids": e["word_ids"]} for e in chunk]
            else:
                feed = [e["input_ids"] for e in chunk]
            batch = collator(feed)
            width = batch["input_ids"].shape[1]
            original = np.full((len(chunk), width), pad_id)
            words = np.full((len(chunk), width), np.nan)
            for i, e in enumerate(chunk):
                original[i, :len(e["input_ids"])] = e["input_ids"]
                words[i, :len(e["word_ids"])] = [np.nan if w is None else w for w in e["word_ids"]]
            for key, value in (("original", original), ("inputs", batch["input_ids"].numpy()),
                               ("labels", batch["labels"].numpy()), ("attention", batch["attention_mask"].numpy()),
                               ("word_ids", words)):
                fill = {"word_ids": np.nan, "labels": IGNORE_INDEX, "attention": 0}.get(key, pad_id)
                padded = np.full((len(chunk), WIDTH), fill, dtype=value.dtype)
                padded[:, :width] = value
                parts[key].append(padded)
    return Masked(**{k: np.concatenate(v) for k, v in parts.items()})


def eligible_of(masked: Masked, specials: np.ndarray) -> np.ndarray:
    return (masked.attention == 1) & ~np.isin(masked.original, specials)


def surprisal_like_weights(examples: list[dict]) -> list[list[float]]:
    rng = np.random.default_rng(1)
    return [rng.exponential(size=len(e["input_ids"])).tolist() for e in examples]


def collate_for(tok: Tokenizer, strategy: str, **options) -> MLMCollator:
    return MLMCollator.from_tokenizer(tok, strategy=strategy, seed=options.pop("seed", 1234), **options)


def masked_corpus(tok: Tokenizer, strategy: str, ragged: list[dict], passes: int, **options) -> Masked:
    weights = surprisal_like_weights(ragged) if strategy == "weighted" else None
    return run(collate_for(tok, strategy, **options), ragged, passes=passes, weights=weights)


# ---------------------------------------------------------------------- selection statistics

RATIO_TOLERANCE = {"token": 0.005, "weighted": 0.005, "whole_word": 0.01, "span": 0.01}


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("ratio", [0.15, 0.4])
def test_selected_fraction_matches_mlm_probability(tok, ragged, specials, strategy, ratio):
    masked = masked_corpus(tok, strategy, ragged, passes=2, mlm_probability=ratio)
    eligible = eligible_of(masked, specials)
    assert eligible.sum() >= MIN_ELIGIBLE
    fraction = masked.selected[eligible].mean()
    assert abs(fraction - ratio) <= RATIO_TOLERANCE[strategy], fraction


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_selected_tokens_are_80_percent_mask_10_random_10_unchanged(tok, ragged, specials, strategy):
    # span treats whole spans alike, so it needs more spans for the same precision
    masked = masked_corpus(tok, strategy, ragged, passes=24 if strategy == "span" else 2)
    assert eligible_of(masked, specials).sum() >= MIN_ELIGIBLE
    sel = masked.selected
    inputs, original = masked.inputs[sel], masked.original[sel]
    assert (masked.labels[sel] == original).all()  # the label is the original token
    mask_id = tok.token_to_id(MASK)
    as_mask = (inputs == mask_id).mean()
    as_random = ((inputs != mask_id) & (inputs != original)).mean()
    unchanged = (inputs == original).mean()
    assert abs(as_mask - 0.8) <= 0.01, as_mask
    assert abs(as_random - 0.1) <= 0.01, as_random
    assert abs(unchanged - 0.1) <= 0.01, unchanged


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_special_tokens_and_padding_are_never_selected_or_changed(tok, ragged, specials, strategy):
    masked = masked_corpus(tok, strategy, ragged, passes=2, mlm_probability=0.9)
    protected = (masked.attention == 0) | np.isin(masked.original, specials)
    assert (masked.attention == 0).sum() > 10_000 and np.isin(masked.original, specials).sum() > 1000
    assert not masked.selected[protected].any()
    assert (masked.inputs[protected] == masked.original[protected]).all()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_random_replacements_are_never_special_tokens(tok, ragged, specials, strategy):
    masked = masked_corpus(tok, strategy, ragged, passes=1, mlm_probability=0.5,
                           mask_replace_prob=0.0, random_replace_prob=1.0)
    replaced = masked.inputs[masked.selected]
    assert not np.isin(replaced, specials).any()
    assert np.unique(replaced).size > 0.9 * (tok.get_vocab_size() - len(specials))  # drawn from the whole rest


def test_special_ids_come_from_mlm_tokenizer_special_token_ids(tok, ragged, monkeypatch):
    assert MLMCollator.from_tokenizer(tok).special_token_ids == special_token_ids(tok)
    common = int(np.bincount(np.concatenate([e["input_ids"] for e in ragged])).argmax())  # e.g. "the"
    monkeypatch.setattr(mlm.collate, "special_token_ids", lambda t: special_token_ids(t) + [common])
    collator = MLMCollator.from_tokenizer(tok, seed=0, mlm_probability=0.9, mask_replace_prob=0.0,
                                          random_replace_prob=1.0)
    masked = run(collator, ragged)
    assert not (masked.labels == common).any()
    assert not (masked.inputs[masked.selected] == common).any()


# ---------------------------------------------------------------------- whole words and spans


def word_selection(masked: Masked) -> tuple[np.ndarray, np.ndarray]:
    """For every word (by word_ids): how many of its tokens are selected, and how many it has."""
    rows, cols = np.nonzero(~np.isnan(masked.word_ids))
    words = masked.word_ids[rows, cols].astype(np.int64)
    _, group = np.unique(rows * (words.max() + 1) + words, return_inverse=True)
    return np.bincount(group, weights=masked.selected[rows, cols]), np.bincount(group)


@pytest.mark.parametrize("with_word_ids", [False, True], ids=["vocabulary", "word_ids"])
def test_whole_word_selects_each_word_entirely_or_not_at_all(tok, ragged, with_word_ids):
    masked = run(collate_for(tok, "whole_word"), ragged, with_word_ids=with_word_ids)
    per_word_selected, per_word_size = word_selection(masked)
    assert ((per_word_selected == 0) | (per_word_selected == per_word_size)).all()
    assert ((per_word_size > 1) & (per_word_selected == per_word_size)).sum() > 500  # multi-token words do occur


def test_whole_word_follows_given_word_ids_over_the_vocabulary(tok, ragged):
    # Group tokens in pairs regardless of "##": word_ids must win over the vocabulary table.
    examples = [{"input_ids": e["input_ids"],
                 "word_ids": [None] + [i // 2 for i in range(len(e["input_ids"]) - 2)] + [None]} for e in ragged]
    masked = run(collate_for(tok, "whole_word"), examples, with_word_ids=True)
    per_word_selected, per_word_size = word_selection(masked)
    assert ((per_word_selected == 0) | (per_word_selected == per_word_size)).all()
    assert (per_word_selected == 2).sum() > 1000


@pytest.mark.parametrize("kind", ["wordpiece", "bpe", "unigram"])
def test_vocabulary_word_boundaries_match_the_tokenizer_words(texts, kind):
    """is_continuation, derived once from the vocabulary, splits text where the tokenizer does:
    punctuation is its own word, so `foo.bar(x)` is several words."""
    tok = train_tokenizer(texts, VOCAB, kind=kind)
    table = MLMCollator.from_tokenizer(tok).is_continuation
    code = tok.encode("x = foo.bar(x) for overlapping_tokenization in itertools.chain()", add_special_tokens=False)
    assert len(set(code.word_ids)) > 10  # x, =, foo, ., bar, (, x, ), for, ...
    for enc in tok.encode_batch(texts[:30], add_special_tokens=False) + [code]:
        same_word_as_previous = np.array(enc.word_ids[1:]) == np.array(enc.word_ids[:-1])
        assert (table[enc.ids[1:]] == same_word_as_previous).all()


def span_runs(masked: Masked) -> tuple[np.ndarray, list[np.ndarray]]:
    """Length in words of every run of consecutive selected words, and the token positions of each run."""
    lengths, members = [], []
    for row in range(masked.labels.shape[0]):
        words = masked.word_ids[row]
        cols = np.flatnonzero(~np.isnan(words))
        ids = words[cols]
        starts = np.r_[True, ids[1:] != ids[:-1]]
        word_sel = masked.selected[row, cols][starts]  # (n_words,)
        word_of_col = np.cumsum(starts) - 1
        edges = np.flatnonzero(np.diff(np.r_[0, word_sel.astype(int), 0]))
        for begin, end in zip(edges[::2], edges[1::2]):
            lengths.append(end - begin)
            members.append(cols[(word_of_col >= begin) & (word_of_col < end)] + row * WIDTH)
    return np.array(lengths), members


def test_span_lengths_follow_the_clipped_geometric_distribution(tok, windows):
    masked = run(collate_for(tok, "span"), windows, passes=3)
    lengths, _ = span_runs(masked)
    assert lengths.size > 5000
    assert lengths.max() <= SPAN_MAX_WORDS
    assert abs(SPAN_MEAN_WORDS - 3.8) < 0.01  # SpanBERT: Geometric(0.2) on 1..10 words
    assert abs(lengths.mean() / SPAN_MEAN_WORDS - 1) <= 0.05, lengths.mean()
    assert abs((lengths == 1).mean() - 0.2 / (1 - 0.8 ** 10)) <= 0.02  # the shape, not only the mean


def test_a_span_gets_one_treatment_for_all_its_tokens(tok, windows):
    collator = collate_for(tok, "span", mask_replace_prob=0.5, random_replace_prob=0.5)
    masked = run(collator, windows)
    _, members = span_runs(masked)
    mask_id = tok.token_to_id(MASK)
    inputs = masked.inputs.reshape(-1)
    masked_share = np.array([(inputs[m] == mask_id).mean() for m in members if m.size > 1])
    assert masked_share.size > 1000
    assert set(np.unique(masked_share)) == {0.0, 1.0}


# ---------------------------------------------------------------------- weighted and exact counts


def test_weighted_selects_in_proportion_to_weight_at_the_same_overall_ratio(tok, ragged, specials):
    # Alternate weights 1 and 3: c solves c*1/2 + c*3/2 = 0.15, so p = 0.075 and 0.225.
    weights = [[1.0 + 2.0 * (i % 2) for i in range(len(e["input_ids"]))] for e in ragged]
    masked = run(collate_for(tok, "weighted"), ragged, passes=2, weights=weights)
    eligible = eligible_of(masked, specials)
    heavy = np.zeros_like(eligible)
    heavy[:, 1::2] = True
    light_rate = masked.selected[eligible & ~heavy].mean()
    heavy_rate = masked.selected[eligible & heavy].mean()
    assert abs(masked.selected[eligible].mean() - 0.15) <= 0.005
    assert abs(light_rate - 0.075) <= 0.005 and abs(heavy_rate - 0.225) <= 0.005, (light_rate, heavy_rate)


def test_weighted_caps_probability_at_one_and_spreads_the_rest(tok, ragged, specials):
    # One token per sequence outweighs the rest a thousandfold: it is always picked, the ratio holds.
    weights = [[1000.0 if i == 1 else 1.0 for i in range(len(e["input_ids"]))] for e in ragged]
    masked = run(collate_for(tok, "weighted"), ragged, weights=weights)
    eligible = eligible_of(masked, specials)
    long_enough = eligible.sum(axis=1) >= 20
    assert masked.selected[long_enough, 1].all()
    assert abs(masked.selected[eligible].mean() - 0.15) <= 0.005


@pytest.mark.parametrize("strategy", ["token", "weighted"])
def test_exact_count_selects_round_p_times_eligible_in_every_sequence(tok, ragged, specials, strategy):
    masked = masked_corpus(tok, strategy, ragged, passes=1, exact_count=True)
    eligible = eligible_of(masked, specials)
    expected = np.rint(0.15 * eligible.sum(axis=1))
    assert (masked.selected.sum(axis=1) == expected).all()
    assert not masked.selected[~eligible].any()


def test_exact_count_weighted_prefers_heavy_tokens(tok, ragged, specials):
    weights = [[1.0 + 2.0 * (i % 2) for i in range(len(e["input_ids"]))] for e in ragged]
    masked = run(collate_for(tok, "weighted", exact_count=True), ragged, weights=weights)
    eligible = eligible_of(masked, specials)
    heavy = np.zeros_like(eligible)
    heavy[:, 1::2] = True
    assert masked.selected[eligible & heavy].mean() > 2 * masked.selected[eligible & ~heavy].mean()


# ---------------------------------------------------------------------- randomness and checkpoints


def batches(collator: MLMCollator, examples: list[dict], n: int = 4) -> list[dict]:
    return [collator([e["input_ids"] for e in examples[i * BATCH:(i + 1) * BATCH]]) for i in range(n)]


def same(a: list[dict], b: list[dict]) -> bool:
    return all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in x)


@pytest.mark.parametrize("strategy", STRATEGIES[:3])
def test_same_seed_gives_identical_batches_and_another_seed_does_not(tok, ragged, strategy):
    first = batches(collate_for(tok, strategy, seed=5), ragged)
    assert same(first, batches(collate_for(tok, strategy, seed=5), ragged))
    assert not same(first, batches(collate_for(tok, strategy, seed=6), ragged))


def test_masks_are_dynamic_from_call_to_call(tok, ragged):
    collator = collate_for(tok, "token")
    chunk = [e["input_ids"] for e in ragged[:BATCH]]
    assert not torch.equal(collator(chunk)["labels"], collator(chunk)["labels"])


def test_a_per_call_generator_decides_the_masks_and_leaves_the_own_stream_alone(tok, ragged):
    chunk = [e["input_ids"] for e in ragged[:BATCH]]
    first, second = collate_for(tok, "span", seed=1), collate_for(tok, "span", seed=2)
    keyed = [c(chunk, generator=np.random.default_rng([9, 3])) for c in (first, second)]
    assert same(keyed[:1], keyed[1:])  # e.g. masks as a function of (seed, step), whatever the collator
    assert same([first(chunk)], [collate_for(tok, "span", seed=1)(chunk)])


def loader_labels(collator: MLMCollator, example: list[int], epochs: int) -> list[list[torch.Tensor]]:
    loader = DataLoader([example] * 16, batch_size=4, num_workers=2, collate_fn=collator)
    return [[batch["labels"] for batch in loader] for _ in range(epochs)]


@pytest.mark.parametrize("seed", [7, None])
def test_dataloader_workers_and_epochs_mask_differently_yet_a_seeded_run_reproduces(tok, windows, seed):
    collator = MLMCollator.from_tokenizer(tok, seed=seed)
    example = windows[0]["input_ids"]  # every item identical: only the masks can differ
    torch.manual_seed(0)
    run1 = loader_labels(collator, example, epochs=2)
    torch.manual_seed(0)
    run2 = loader_labels(collator, example, epochs=2)
    (w0_e1, w1_e1, *_), (w0_e2, *_) = run1  # batches alternate between worker 0 and worker 1
    assert not torch.equal(w0_e1, w1_e1)  # two workers
    assert not torch.equal(w0_e1, w0_e2)  # two epochs
    assert all(torch.equal(a, b) for e1, e2 in zip(run1, run2) for a, b in zip(e1, e2))
    torch.manual_seed(1)
    assert not torch.equal(loader_labels(collator, example, epochs=1)[0][0], w0_e1)


def test_pickle_round_trip_keeps_settings_and_the_random_stream(tok, ragged):
    collator = collate_for(tok, "whole_word", mlm_probability=0.3)
    batches(collator, ragged, n=2)
    clone = pickle.loads(pickle.dumps(collator))
    assert repr(clone) == repr(collator)
    assert same(batches(clone, ragged[64:]), batches(collator, ragged[64:]))


def test_state_dict_resume_gives_the_identical_next_batch(tok, ragged):
    collator = collate_for(tok, "span")
    batches(collator, ragged, n=3)
    buffer = io.BytesIO()
    torch.save(collator.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    resumed = collate_for(tok, "span", seed=999)
    resumed.load_state_dict(state)
    expected = batches(collator, ragged[96:], n=2)
    assert same(batches(resumed, ragged[96:], n=2), expected)
    assert not same(batches(collate_for(tok, "span"), ragged[96:], n=2), expected)  # a fresh start differs


def test_load_state_dict_rejects_something_else(tok):
    with pytest.raises(ValueError, match="state_dict"):
        MLMCollator.from_tokenizer(tok).load_state_dict({"rng": 1})


# ---------------------------------------------------------------------- inputs and outputs


def test_batch_is_padded_long_tensors_with_ignored_labels_on_padding(tok, ragged):
    chunk = [e["input_ids"] for e in ragged[:BATCH]]
    longest = max(map(len, chunk))
    batch = collate_for(tok, "token", mlm_probability=1.0)(chunk)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert all(v.dtype == torch.long and v.shape == (BATCH, longest) for v in batch.values())
    lengths = torch.tensor([len(c) for c in chunk])
    padding = torch.arange(longest) >= lengths[:, None]
    assert torch.equal(batch["attention_mask"], (~padding).long())
    assert (batch["input_ids"][padding] == tok.token_to_id(PAD)).all()
    assert (batch["labels"][padding] == IGNORE_INDEX).all()


def test_pad_to_multiple_of_and_numpy_output(tok, ragged):
    chunk = [e["input_ids"] for e in ragged[:5]]
    batch = collate_for(tok, "token", pad_to_multiple_of=48, return_tensors="np")(chunk)
    width = batch["input_ids"].shape[1]
    assert width % 48 == 0 and width - 48 < max(map(len, chunk)) <= width
    assert all(isinstance(v, np.ndarray) and v.dtype == np.int64 for v in batch.values())


def test_lists_arrays_tensors_and_dicts_give_the_same_batch_and_stay_untouched(tok, ragged):
    lists = [e["input_ids"] for e in ragged[:BATCH]]
    arrays = [np.array(x, dtype=np.int32) for x in lists]
    tensors = [torch.tensor(x) for x in lists]
    dicts = [{"input_ids": x} for x in lists]
    blocks = np.array([x + [0] * (WIDTH - len(x)) for x in lists], dtype=np.uint16)  # (B, L) padded storage
    results = [collate_for(tok, "whole_word", seed=3)(form) for form in (lists, arrays, tensors, dicts)]
    from_blocks = collate_for(tok, "whole_word", seed=3, pad_to_multiple_of=WIDTH)(blocks)
    # whole_word draws once per word, so the extra [PAD] columns do not shift the masks
    assert torch.equal(from_blocks["labels"][:, :results[0]["labels"].shape[1]], results[0]["labels"])
    for other in results[1:]:
        assert same([results[0]], [other])
    assert all((a == np.array(x)).all() for a, x in zip(arrays, lists))
    assert all(torch.equal(t, torch.tensor(x)) for t, x in zip(tensors, lists))


def test_dict_fields_are_used_padded_or_passed_through(tok, ragged):
    chunk = ragged[:BATCH]
    examples = [{"input_ids": e["input_ids"], "special_tokens_mask": [0] + [1] * 2 + [0] * (len(e["input_ids"]) - 3),
                 "token_type_ids": [1] * len(e["input_ids"]), "index": i} for i, e in enumerate(chunk)]
    batch = collate_for(tok, "token", mlm_probability=1.0)(examples)
    assert (batch["labels"][:, 1:3] == IGNORE_INDEX).all()  # marked special by the example
    assert torch.equal(batch["token_type_ids"], batch["attention_mask"])  # 1 on tokens, padded with 0
    assert torch.equal(batch["index"], torch.arange(BATCH))


def test_an_attention_mask_in_the_examples_excludes_those_positions(tok, ragged):
    e = ragged[0]["input_ids"]
    example = {"input_ids": e, "attention_mask": [1] * 5 + [0] * (len(e) - 5)}
    batch = collate_for(tok, "token", mlm_probability=1.0)([example])
    assert (batch["labels"][0, 5:] == IGNORE_INDEX).all() and (batch["labels"][0, 1:4] != IGNORE_INDEX).all()


def test_from_tokenizer_accepts_a_tokenizer_a_path_and_a_transformers_tokenizer(tok, ragged, tmp_path):
    transformers = pytest.importorskip("transformers")
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token=PAD,
                                                cls_token="[CLS]", sep_token="[SEP]", mask_token=MASK)
    def build(source):
        return MLMCollator.from_tokenizer(source, strategy="whole_word", seed=2)

    first = build(tok)
    expected = batches(first, ragged, n=2)
    for source in (path, str(tmp_path), fast):
        other = build(source)
        assert (other.vocab_size, other.mask_token_id, other.pad_token_id, other.special_token_ids) == \
            (first.vocab_size, first.mask_token_id, first.pad_token_id, first.special_token_ids)
        assert (other.is_continuation == first.is_continuation).all()
        assert same(batches(other, ragged, n=2), expected)


# ---------------------------------------------------------------------- bad arguments

KW = dict(vocab_size=100, mask_token_id=4, pad_token_id=0, special_token_ids=[0, 1, 2, 3, 4])


@pytest.mark.parametrize("options, message", [
    (dict(mlm_probability=1.5), r"mlm_probability=1\.5 .* within \[0, 1\]"),
    (dict(mlm_probability=-0.1), r"mlm_probability=-0\.1 .* within \[0, 1\]"),
    (dict(mask_replace_prob=1.2), r"mask_replace_prob=1\.2 .* within \[0, 1\]"),
    (dict(random_replace_prob=-0.5), r"random_replace_prob=-0\.5 .* within \[0, 1\]"),
    (dict(mask_replace_prob=0.9, random_replace_prob=0.2), r"exceeds 1; lower one of them"),
    (dict(strategy="random"), r"choose one of token, whole_word, span, weighted"),
    (dict(strategy="span", exact_count=True), r"exact_count=True works with strategy 'token' or 'weighted'"),
    (dict(return_tensors="tf"), r"use 'pt' \(torch\) or 'np'"),
    (dict(pad_to_multiple_of=0), r"pad_to_multiple_of=0 .* integer >= 1"),
    (dict(mask_token_id=100), r"mask_token_id=100 .* in \[0, 100\)"),
    (dict(is_continuation=[False] * 7), r"one entry per id, shape \(100,\)"),
])
def test_bad_settings_raise_value_error_saying_what_to_change(options, message):
    with pytest.raises(ValueError, match=message):
        MLMCollator(**{**KW, **options})


def test_a_tokenizer_without_mask_token_is_rejected(tmp_path):
    plain = Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1, "a": 2, "b": 3}, unk_token="[UNK]"))
    plain.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(ValueError, match=r"no mask token; add one as a special token"):
        MLMCollator.from_tokenizer(plain)
    plain.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match=r"no \[MASK\] token"):
        MLMCollator.from_tokenizer(tmp_path / "tokenizer.json")


@pytest.mark.parametrize("examples, message", [
    ([], r"examples is empty; pass at least one example"),
    ([np.array([5, 6], dtype=np.int32), np.array([7], dtype=np.int64)],
     r"mix int32 numpy arrays and int64 numpy arrays"),
    ([torch.tensor([5, 6]), torch.tensor([7], dtype=torch.int32)], r"mix int32 tensors and int64 tensors"),
    ([[5, 6], np.array([7])], r"mix int64 numpy arrays and lists"),
    ([np.array([5.0, 6.0])], r"integer dtype, got float64; convert it"),
    ([[5, None]], r"integers only"),
    ([[5, 6, 100]], r"contain 100, outside \[0, vocab_size=100\)"),
    ([{"input_ids": [5, 6], "offset_mapping": [(0, 1), (1, 2)]}], r"'offset_mapping' .* pass word_ids instead"),
    ([{"input_ids": [5, 6], "word_ids": [0]}], r"'word_ids' has 1 entries but input_ids has 2 tokens"),
    ([{"input_ids": [5]}, {"input_ids": [6], "x": 1}], r"example 1 has fields .* same fields"),
    ([{"input_ids": [5], "labels": [5]}], r"already have 'labels'"),
])
def test_bad_batches_raise_value_error_saying_what_to_change(examples, message):
    with pytest.raises(ValueError, match=message):
        MLMCollator(**KW)(examples)


def test_strategies_that_need_words_or_weights_say_how_to_provide_them():
    with pytest.raises(ValueError, match=r"give examples a 'word_ids' field"):
        MLMCollator(**KW, strategy="whole_word")([[5, 6, 7]])
    with pytest.raises(ValueError, match=r"needs a per-token 'weights' field"):
        MLMCollator(**KW, strategy="weighted")([[5, 6, 7]])
    with pytest.raises(ValueError, match=r"weights must be finite and >= 0"):
        MLMCollator(**KW, strategy="weighted")([{"input_ids": [5, 6], "weights": [1.0, -2.0]}])


# ---------------------------------------------------------------------- seeding conventions of transformers


def _transformers_reproducer() -> tuple[MLMCollator, list[list[int]]]:
    make = MLMCollator(vocab_size=1000, mask_token_id=4, pad_token_id=0, special_token_ids=[0, 1, 2, 3, 4])
    return make, [list(range(5, 1000))] * 2


def test_unseeded_masks_follow_torch_manual_seed_like_transformers():
    make = lambda: _transformers_reproducer()[0]  # noqa: E731
    _, x = _transformers_reproducer()
    torch.manual_seed(0)
    a = make()(x)["labels"]
    torch.manual_seed(0)
    b = make()(x)["labels"]
    assert torch.equal(a, b)
    torch.manual_seed(1)
    assert not torch.equal(make()(x)["labels"], a)


def test_two_unseeded_calls_after_one_manual_seed_differ():
    collator, x = _transformers_reproducer()
    torch.manual_seed(0)
    assert not torch.equal(collator(x)["labels"], collator(x)["labels"])


def test_an_unseeded_run_differs_from_a_seeded_one_and_the_seeded_ignores_torch():
    _, x = _transformers_reproducer()
    options = dict(vocab_size=1000, mask_token_id=4, pad_token_id=0, special_token_ids=[0, 1, 2, 3, 4])
    torch.manual_seed(0)
    unseeded = MLMCollator(**options)(x)["labels"]
    torch.manual_seed(0)
    seeded = MLMCollator(**options, seed=0)(x)["labels"]
    assert not torch.equal(unseeded, seeded)
    torch.manual_seed(123)  # the own generator of a seeded collator does not read torch's
    assert torch.equal(MLMCollator(**options, seed=0)(x)["labels"], seeded)


@pytest.mark.parametrize("strategy", ["whole_word", "span"])
@pytest.mark.parametrize("no_word", [None, -1])
def test_tokens_without_a_word_are_never_selected_by_word_strategies(strategy, no_word):
    # 40 words of 3 tokens each; every fourth word's tokens carry no word id (None / -1), e.g. the
    # glue tokens a pre-tokenizer adds. transformers never selects them; neither do we.
    ids, words = [], []
    for w in range(40):
        ids += [10 + 3 * w, 11 + 3 * w, 12 + 3 * w]
        words += [no_word if w % 4 == 0 else w] * 3
    example = {"input_ids": ids, "word_ids": words}
    collator = MLMCollator(vocab_size=200, mask_token_id=4, pad_token_id=0, special_token_ids=[0, 1, 2, 3, 4],
                           strategy=strategy, mlm_probability=0.3, seed=0)
    labels = torch.cat([collator([example] * 8)["labels"] for _ in range(50)])  # (400, 120)
    selected = labels != IGNORE_INDEX
    wordless = torch.tensor([w % 4 == 0 for w in range(40) for _ in range(3)])
    assert not selected[:, wordless].any()
    rate = selected[:, ~wordless].float().mean().item()
    assert abs(rate - 0.3) < 0.03, rate  # the others keep the asked ratio (12,000 words: 0.03 is ~7 standard errors)


# ---------------------------------------------------------------------- code and character vocabularies

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def test_byte_level_words_follow_identifier_boundaries():
    """byte_bpe (code): a word starts at a space, newline/indent or punctuation token, so no identifier
    is ever cut (`snake_case`, `__init__`) and no word holds two identifiers (`foo.bar` is `foo`, `.bar`)."""
    source = Path(json.decoder.__file__).read_text(encoding="utf-8") + inspect.getsource(textwrap)
    assert source.isascii()  # character offsets are byte offsets
    tok = train_tokenizer([source], 1200, "byte_bpe")
    table = MLMCollator.from_tokenizer(tok).is_continuation
    enc = tok.encode(source, add_special_tokens=False)
    word_starts = np.array([start for i, (start, _) in zip(enc.ids, enc.offsets) if not table[i]])
    identifiers = [m.span() for m in IDENTIFIER.finditer(source)]
    assert len(identifiers) > 2000 and (~table[enc.ids]).sum() < len(enc.ids)  # multi-token words occur
    starts_inside = np.array([np.searchsorted(word_starts, s, "right") < np.searchsorted(word_starts, e, "left")
                              for s, e in identifiers])
    assert not starts_inside.any()  # no word starts inside an identifier
    between = np.array([np.searchsorted(word_starts, e1, "left") < np.searchsorted(word_starts, s2, "right")
                        for (_, e1), (s2, _) in zip(identifiers, identifiers[1:])])
    assert between.all()  # a word starts between any two identifiers
    code = "    def __init__(self, snake_case):\n        return foo.bar(x)\n"
    ids = tok.encode(code, add_special_tokens=False).ids
    words = [[]]
    for i in ids:
        if not table[i] and words[-1]:
            words.append([])
        words[-1].append(i)
    texts = [tok.decode(w) for w in words]
    assert " __init__" in texts and " snake_case" in texts and ".bar" in texts and "(self" in texts


def test_whole_word_on_code_masks_identifiers_entirely():
    source = Path(json.decoder.__file__).read_text(encoding="utf-8")
    tok = train_tokenizer([source], 800, "byte_bpe")
    enc = tok.encode(source, add_special_tokens=False)
    table = MLMCollator.from_tokenizer(tok).is_continuation
    word = np.cumsum(~table[enc.ids])  # word number of every token, by the table
    examples = [{"input_ids": enc.ids[i:i + WIDTH], "word_ids": word[i:i + WIDTH].tolist()}
                for i in range(0, len(enc.ids) - WIDTH, WIDTH)]
    masked = run(collate_for(tok, "whole_word", mlm_probability=0.3), examples, passes=20)
    per_word_selected, per_word_size = word_selection(masked)
    assert ((per_word_selected == 0) | (per_word_selected == per_word_size)).all()
    assert abs(masked.selected[masked.attention == 1].mean() - 0.3) < 0.02


def test_on_a_char_vocabulary_whole_word_is_token_masking_and_spans_count_residues():
    tok = train_tokenizer(["ACDEFGHIKLMNPQRSTVWY"], 25, "char")
    assert not MLMCollator.from_tokenizer(tok).is_continuation.any()  # every residue is a word
    rng = np.random.default_rng(0)
    residues = np.array([tok.token_to_id(c) for c in "ACDEFGHIKLMNPQRSTVWY"])
    examples = [{"input_ids": rng.choice(residues, WIDTH).tolist(), "word_ids": list(range(WIDTH))}
                for _ in range(800)]
    whole = run(collate_for(tok, "whole_word"), examples)
    assert abs(whole.selected.mean() - 0.15) < 0.005
    lengths, _ = span_runs(run(collate_for(tok, "span"), examples, passes=2))
    assert lengths.max() <= SPAN_MAX_WORDS
    assert abs(lengths.mean() / SPAN_MEAN_WORDS - 1) <= 0.05  # spans of 3.8 residues on average
