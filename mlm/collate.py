"""Dynamic masking for BERT-style MLM: a `DataLoader` collate_fn that other projects import.

Why not `transformers.DataCollatorForLanguageModeling`: its random replacements come from the
whole vocabulary (so they can insert [CLS]/[PAD]/[MASK], which our model gives probability zero),
its whole-word masking needs character offsets, builds a batch x L x L table and drops the
80/10/10 rule, and it finds special tokens with a Python loop per example. Here every decision
is a vectorised numpy operation on the whole padded batch, and the set of ids that may never be
selected or inserted is exactly `mlm.tokenizer.special_token_ids`, the set the model excludes.

    collator = MLMCollator.from_tokenizer("runs/tok/tokenizer.json", strategy="whole_word")
    loader = DataLoader(dataset, batch_size=32, collate_fn=collator, num_workers=2)
"""
from __future__ import annotations

import json
import numbers
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Mapping, Sequence, Union

import numpy as np
import torch
from tokenizers import Tokenizer
from torch.utils.data import get_worker_info

from mlm.errors import UserError
from mlm.tokenizer import MASK, PAD, load_tokenizer, special_token_ids

__all__ = ["MLMCollator", "STRATEGIES", "IGNORE_INDEX", "SPAN_GEOMETRIC_P", "SPAN_MAX_WORDS"]

Strategy = Literal["token", "whole_word", "span", "weighted"]
STRATEGIES: tuple[str, ...] = ("token", "whole_word", "span", "weighted")
IGNORE_INDEX = -100  # label of positions that are not predicted (torch's cross_entropy default)

# SpanBERT: span lengths, in words, follow Geometric(0.2) restricted to 1..10 (mean 3.8 words).
SPAN_GEOMETRIC_P = 0.2
SPAN_MAX_WORDS = 10
_SPAN_PMF = SPAN_GEOMETRIC_P * (1 - SPAN_GEOMETRIC_P) ** np.arange(SPAN_MAX_WORDS)
_SPAN_PMF /= _SPAN_PMF.sum()
_SPAN_CDF = np.cumsum(_SPAN_PMF)
_SPAN_CDF[-1] = 1.0
SPAN_MEAN_WORDS = float(np.dot(np.arange(1, SPAN_MAX_WORDS + 1), _SPAN_PMF))
# Mean span length once cut to a row of w words, for w = 0..10 (E[min(l, w)] = sum of P(l >= k), k <= w).
_SPAN_MEAN_IN_ROW = np.r_[1.0, np.cumsum(1.0 - np.r_[0.0, _SPAN_CDF[:-1]])]

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

TokenizerSource = Union[Tokenizer, str, Path, "PreTrainedTokenizerBase"]
Batch = dict[str, Union[torch.Tensor, np.ndarray]]

_STATE_FORMAT = 1
# Per-token fields of dict examples: padded along with input_ids.
_TOKEN_FIELDS = ("attention_mask", "special_tokens_mask", "word_ids", "weights", "token_type_ids")
_MASK_NAMES = (MASK, "<mask>")
_PAD_NAMES = (PAD, "<pad>")


class MLMCollator:
    """Pads a list of examples into a batch and masks it for MLM, freshly at every call.

    Strategies (`strategy=`):
      * "token": each eligible token is selected independently with `mlm_probability`.
      * "whole_word": each word is selected with `mlm_probability` as a unit, so the expected
        fraction of selected tokens is still `mlm_probability`; 80/10/10 applies per token.
      * "span": SpanBERT spans of whole words (lengths ~ Geometric(0.2) on 1..10 words) until about
        `mlm_probability` of the words are covered; a whole span gets one 80/10/10 treatment.
      * "weighted": per-token `weights` (e.g. surprisal) bias the choice while the expected
        fraction stays `mlm_probability`: p_i = min(1, c * w_i), c solved per sequence.

    Of the selected tokens, `mask_replace_prob` become the mask token, `random_replace_prob` a
    random non-special token, the rest stay; `labels` hold the original id there and -100 elsewhere.

    Randomness: with `seed` set, the sequence of batches is reproducible. Inside a DataLoader
    worker the generator is re-seeded from (`seed`, the worker's torch seed), which torch draws
    from the main process RNG for every epoch: workers and epochs mask differently, and a run with
    `torch.manual_seed` and `seed` set reproduces exactly. `state_dict()` checkpoints the generator.
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        mask_token_id: int,
        pad_token_id: int,
        special_token_ids: Sequence[int],
        mlm_probability: float = 0.15,
        mask_replace_prob: float = 0.8,
        random_replace_prob: float = 0.1,
        strategy: Strategy = "token",
        exact_count: bool = False,
        is_continuation: Sequence[bool] | np.ndarray | None = None,
        pad_to_multiple_of: int | None = None,
        return_tensors: Literal["pt", "np"] = "pt",
        seed: int | None = None,
    ) -> None:
        """`is_continuation[id]` is True for tokens that continue the previous token's word (e.g.
        "##ing"); whole_word and span use it when examples carry no `word_ids`. `exact_count`
        selects exactly round(p * eligible) tokens per sequence instead of independent draws."""
        _check_int("vocab_size", vocab_size, low=1)
        _check_int("mask_token_id", mask_token_id, low=0, high=vocab_size)
        _check_int("pad_token_id", pad_token_id, low=0, high=vocab_size)
        specials = sorted({int(i) for i in special_token_ids} | {mask_token_id, pad_token_id})
        if specials[0] < 0 or specials[-1] >= vocab_size:
            raise ValueError(f"special_token_ids must lie in [0, vocab_size={vocab_size}); "
                             f"got {specials[0] if specials[0] < 0 else specials[-1]}")
        for name, prob in (("mlm_probability", mlm_probability), ("mask_replace_prob", mask_replace_prob),
                           ("random_replace_prob", random_replace_prob)):
            if not isinstance(prob, numbers.Real) or not 0.0 <= float(prob) <= 1.0:
                raise ValueError(f"{name}={prob!r} is not a probability; set it within [0, 1]")
        if mask_replace_prob + random_replace_prob > 1.0 + 1e-9:
            raise ValueError(f"mask_replace_prob + random_replace_prob = {mask_replace_prob + random_replace_prob:g} "
                             "exceeds 1; lower one of them (the rest, 1 - both, is left unchanged)")
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy={strategy!r} is unknown; choose one of {', '.join(STRATEGIES)}")
        if exact_count and strategy not in ("token", "weighted"):
            raise ValueError(f"exact_count=True works with strategy 'token' or 'weighted', not {strategy!r}; "
                             "set exact_count=False or change the strategy")
        if return_tensors not in ("pt", "np"):
            raise ValueError(f"return_tensors={return_tensors!r} is unknown; use 'pt' (torch) or 'np' (numpy)")
        if pad_to_multiple_of is not None:
            _check_int("pad_to_multiple_of", pad_to_multiple_of, low=1)
        if seed is not None:
            _check_int("seed", seed, low=0)

        self.vocab_size = int(vocab_size)
        self.mask_token_id = int(mask_token_id)
        self.pad_token_id = int(pad_token_id)
        self.special_token_ids = specials
        self.mlm_probability = float(mlm_probability)
        self.mask_replace_prob = float(mask_replace_prob)
        self.random_replace_prob = float(random_replace_prob)
        self.strategy: Strategy = strategy
        self.exact_count = bool(exact_count)
        self.pad_to_multiple_of = pad_to_multiple_of
        self.return_tensors = return_tensors
        self.seed = seed

        # Lookup tables indexed by token id: one gather per batch instead of a loop per example.
        self._is_special = np.zeros(vocab_size, dtype=bool)
        self._is_special[specials] = True
        self._replacements = np.flatnonzero(~self._is_special)  # the only ids random replacement draws
        if self._replacements.size == 0 and self.random_replace_prob > 0:
            raise ValueError("every id is special, so there is nothing to draw random replacements from; "
                             "set random_replace_prob=0 or list fewer special_token_ids")
        self.is_continuation: np.ndarray | None = None
        if is_continuation is not None:
            table = np.asarray(is_continuation, dtype=bool)
            if table.shape != (vocab_size,):
                raise ValueError(f"is_continuation must have one entry per id, shape ({vocab_size},); "
                                 f"got shape {table.shape}")
            self.is_continuation = table

        self._rng = np.random.default_rng(seed)  # seed=None: fresh OS entropy
        self._worker_seed: int | None = None  # torch seed of the DataLoader worker we were seeded for

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_tokenizer(cls, tokenizer: TokenizerSource, **options: Any) -> MLMCollator:
        """Build a collator whose special ids, mask/pad ids and word boundaries come from `tokenizer`.

        `tokenizer` is a `tokenizers.Tokenizer`, a path to a tokenizer.json (or its folder), or a
        transformers fast tokenizer. Special ids come from `mlm.tokenizer.special_token_ids`, the
        same function the model uses to exclude ids, so a label is never an impossible token.
        `options` are the constructor's keyword arguments (strategy, mlm_probability, seed, ...).
        """
        source: Any = tokenizer
        if isinstance(tokenizer, (str, Path)):
            try:
                source = load_tokenizer(tokenizer)
            except UserError as err:
                raise ValueError(str(err)) from None
        if isinstance(source, Tokenizer):
            backend = source
            mask_id = _first_token_id(backend, _MASK_NAMES)
            pad_id = _first_token_id(backend, _PAD_NAMES)
            if pad_id is None and backend.padding is not None:
                pad_id = backend.padding.get("pad_id")
            vocab_size = backend.get_vocab_size(with_added_tokens=True)
        elif hasattr(source, "backend_tokenizer") and hasattr(source, "all_special_ids"):
            backend = source.backend_tokenizer
            mask_id, pad_id = source.mask_token_id, source.pad_token_id
            vocab_size = len(source)
        else:
            raise TypeError(f"cannot build a collator from {type(tokenizer).__name__}; pass a tokenizers.Tokenizer, "
                            "a path to tokenizer.json or a transformers fast tokenizer")
        if mask_id is None:
            raise ValueError("the tokenizer has no mask token; add one as a special token "
                             f"({' or '.join(_MASK_NAMES)}) and retrain or re-save the tokenizer")
        if pad_id is None:
            raise ValueError("the tokenizer has no padding token; add one as a special token "
                             f"({' or '.join(_PAD_NAMES)}) and retrain or re-save the tokenizer")
        options.setdefault("is_continuation", _continuation_table(backend, vocab_size))
        return cls(vocab_size=vocab_size, mask_token_id=mask_id, pad_token_id=pad_id,
                   special_token_ids=special_token_ids(source), **options)

    # ------------------------------------------------------------------ calling

    def __call__(self, examples: Sequence[Any], generator: np.random.Generator | None = None) -> Batch:
        """Collate and mask `examples`: sequences of ids, or dicts with `input_ids` (and optionally
        `word_ids`, `special_tokens_mask`, `attention_mask`, `weights`, `token_type_ids`, scalars).

        `generator` replaces the collator's own generator for this call (which then does not
        advance), so a trainer can make each batch's masks a pure function of, e.g., (seed, step).
        """
        rng = self._generator() if generator is None else generator
        ids, valid, fields, scalars = self._pad(examples)  # ids: (B, L) int64, fresh, ours to overwrite
        if ids.size and ids.view(np.uint64).max() >= self.vocab_size:  # negative ids wrap to huge values
            bad = ids[(ids < 0) | (ids >= self.vocab_size)][0]
            raise ValueError(f"input_ids contain {bad}, outside [0, vocab_size={self.vocab_size}); "
                             "tokenize with the collator's tokenizer or fix vocab_size")

        eligible = ~self._is_special[ids]  # (B, L); padding is the pad id, hence never eligible
        if "attention_mask" in fields:
            eligible &= fields["attention_mask"] != 0
        if "special_tokens_mask" in fields:
            eligible &= fields.pop("special_tokens_mask") == 0

        if self.strategy == "weighted" and "weights" not in fields:
            raise ValueError("strategy 'weighted' needs a per-token 'weights' field in every example "
                             "(dicts with input_ids and weights); add it or choose another strategy")
        treatment = None
        if not eligible.any():  # e.g. only special tokens: nothing to draw
            selected = eligible
        elif self.strategy == "token":
            selected = self._select_tokens(rng, eligible, None)
        elif self.strategy == "weighted":
            selected = self._select_tokens(rng, eligible, fields["weights"])
        else:
            starts, word = self._word_index(ids, eligible, fields.get("word_ids"))
            if self.strategy == "whole_word":
                selected = self._select_words(rng, eligible, word)
            else:
                selected, treatment = self._select_spans(rng, eligible, starts, word)

        labels = np.where(selected, ids, IGNORE_INDEX)  # (B, L), before ids are overwritten
        self._replace(rng, ids, selected, treatment)

        attention = fields.get("attention_mask")
        if attention is None:
            attention = np.ones(ids.shape, dtype=np.int64) if valid is None else valid.astype(np.int64)
        batch = {"input_ids": ids, "attention_mask": attention, "labels": labels}
        if "token_type_ids" in fields:
            batch["token_type_ids"] = fields["token_type_ids"]
        batch.update(scalars)
        if self.return_tensors == "pt":
            return {key: torch.from_numpy(value) for key, value in batch.items()}
        return batch

    # ------------------------------------------------------------------ checkpointing

    def state_dict(self) -> dict[str, Any]:
        """The generator state, as plain Python types (loads with torch.load(weights_only=True))."""
        return {"format": _STATE_FORMAT, "seed": self.seed, "worker_seed": self._worker_seed,
                "bit_generator": self._rng.bit_generator.state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a `state_dict()`: the next batch is the one the checkpointed collator would make."""
        if not isinstance(state, Mapping) or state.get("format") != _STATE_FORMAT or "bit_generator" not in state:
            raise ValueError("not an MLMCollator state_dict (expected keys format=1, bit_generator); "
                             "pass what MLMCollator.state_dict() returned")
        rng = np.random.Generator(np.random.PCG64())
        try:
            rng.bit_generator.state = dict(state["bit_generator"])
        except (TypeError, ValueError, KeyError) as err:
            raise ValueError(f"state_dict holds an unusable generator state ({err}); "
                             "pass what MLMCollator.state_dict() returned") from None
        self._rng = rng
        self._worker_seed = state.get("worker_seed")

    def __repr__(self) -> str:
        return (f"MLMCollator(strategy={self.strategy!r}, mlm_probability={self.mlm_probability}, "
                f"mask_replace_prob={self.mask_replace_prob}, random_replace_prob={self.random_replace_prob}, "
                f"exact_count={self.exact_count}, vocab_size={self.vocab_size}, mask_token_id={self.mask_token_id}, "
                f"pad_token_id={self.pad_token_id}, pad_to_multiple_of={self.pad_to_multiple_of}, "
                f"return_tensors={self.return_tensors!r}, seed={self.seed})")

    # ------------------------------------------------------------------ internals: randomness

    def _generator(self) -> np.random.Generator:
        """Our generator, re-seeded once per DataLoader worker (and per epoch unless workers persist).

        Without this, every worker would start from the same pickled state and mask alike.
        """
        info = get_worker_info()
        if info is not None and info.seed != self._worker_seed:
            entropy = [info.seed] if self.seed is None else [info.seed, self.seed]
            self._rng = np.random.default_rng(np.random.SeedSequence(entropy))
            self._worker_seed = info.seed
        return self._rng

    # ------------------------------------------------------------------ internals: padding

    def _pad(self, examples: Sequence[Any]) -> tuple[np.ndarray, np.ndarray | None,
                                                      dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Pad input_ids and the per-token fields to (B, L); gather scalar fields into (B,) arrays.

        Also returns the (B, L) real-token mask, or None when no position is padding.
        """
        if not hasattr(examples, "__len__") or isinstance(examples, (str, bytes, Mapping)):
            raise ValueError(f"examples must be a list of sequences or dicts, got {type(examples).__name__}")
        if len(examples) == 0:
            raise ValueError("examples is empty; pass at least one example (a DataLoader with drop_last=True "
                             "never sends an empty batch)")
        columns: dict[str, list[Any]]
        if isinstance(examples[0], Mapping):
            keys = examples[0].keys()
            for i, example in enumerate(examples):
                if not isinstance(example, Mapping) or example.keys() != keys:
                    raise ValueError(f"example {i} has fields {_describe_keys(example)} but example 0 has "
                                     f"{sorted(keys)}; give every example the same fields")
            if "input_ids" not in keys:
                raise ValueError(f"dict examples need an 'input_ids' field; got {sorted(keys)}")
            if "labels" in keys:
                raise ValueError("examples already have 'labels'; the collator makes them, so remove that field")
            columns = {key: [example[key] for example in examples] for key in keys}
        else:
            columns = {"input_ids": list(examples)}

        seqs = columns.pop("input_ids")
        try:
            lengths = [len(seq) for seq in seqs]
        except TypeError:
            raise ValueError("every example (or its input_ids) must be a sequence of token ids: "
                             "a list of ints, a 1-D numpy array or a 1-D tensor") from None
        longest, total = max(lengths), sum(lengths)
        width = longest
        if self.pad_to_multiple_of is not None:
            width = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        valid = None  # (B, L) real-token mask; None when nothing is padding
        if width != longest or min(lengths) != longest:
            valid = np.arange(width) < np.asarray(lengths)[:, None]

        def pad(name: str, values: list[Any], dtype: type, fill: Any) -> np.ndarray:
            flat = _flatten(name, values, dtype, total)  # (sum of lengths,)
            if valid is None:
                return flat.reshape(len(values), width)  # no copy
            out: np.ndarray = np.full((len(values), width), fill, dtype=dtype)
            out[valid] = flat
            return out

        ids = pad("input_ids", seqs, np.int64, self.pad_token_id)
        fields: dict[str, np.ndarray] = {}
        scalars: dict[str, np.ndarray] = {}
        for key, values in columns.items():
            if key in _TOKEN_FIELDS:
                for i, (value, length) in enumerate(zip(values, lengths)):
                    if not hasattr(value, "__len__") or len(value) != length:
                        found = f"{len(value)} entries" if hasattr(value, "__len__") else type(value).__name__
                        raise ValueError(f"example {i}: '{key}' has {found} but input_ids has {length} tokens; "
                                         "per-token fields need one entry per token")
                if key == "word_ids":
                    word_ids = fields[key] = pad(key, values, np.float64, np.nan)
                    word_ids[word_ids < 0] = np.nan  # -1 (or None, read as NaN) = no word
                elif key == "weights":
                    fields[key] = pad(key, values, np.float64, 0.0)
                else:
                    fields[key] = pad(key, values, np.int64, 0)
            elif all(isinstance(v, numbers.Number) or isinstance(v, torch.Tensor) and v.ndim == 0 for v in values):
                scalars[key] = np.asarray([v.item() if isinstance(v, torch.Tensor) else v for v in values])
            else:
                hint = " and pass word_ids instead" if key == "offset_mapping" else ""
                raise ValueError(f"examples have a field {key!r} the collator cannot pad; per-token fields it "
                                 f"understands are input_ids, {', '.join(_TOKEN_FIELDS)}, and numeric scalars "
                                 f"pass through. Remove the field{hint}")
        return ids, valid, fields, scalars

    # ------------------------------------------------------------------ internals: selection

    def _select_tokens(self, rng: np.random.Generator, eligible: np.ndarray,
                       weights: np.ndarray | None) -> np.ndarray:
        """Token and weighted selection, by independent draws or an exact count per sequence."""
        p = self.mlm_probability
        if weights is None and not self.exact_count:
            return eligible & (rng.random(eligible.shape, dtype=np.float32) < p)
        n_eligible = eligible.sum(axis=1)  # (B,)
        if weights is None:  # exact count, uniform: the k smallest random keys win
            keys = rng.random(eligible.shape)
        else:
            w = _checked_weights(weights, eligible)
            if not self.exact_count:
                return eligible & (rng.random(eligible.shape) < _inclusion_probabilities(w, p * n_eligible))
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

    def _word_index(self, ids: np.ndarray, eligible: np.ndarray,
                    word_ids: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Word starts (B, L) and, for each token, the flat index of its word across the batch (B*L,).

        A word starts at an eligible token whose predecessor is ineligible or belongs to another
        word: by `word_ids` when given, else by the vocabulary's continuation table. One pass, O(B*L).
        """
        prev_eligible = np.zeros_like(eligible)
        prev_eligible[:, 1:] = eligible[:, :-1]
        if word_ids is not None:
            new_word = np.ones_like(eligible)
            new_word[:, 1:] = word_ids[:, 1:] != word_ids[:, :-1]  # NaN (no word) differs from everything
        elif self.is_continuation is not None:
            new_word = ~self.is_continuation[ids]
        else:
            raise ValueError(f"strategy {self.strategy!r} needs word boundaries: give examples a 'word_ids' field "
                             "(a fast tokenizer's encoding.word_ids), or pass is_continuation= (from_tokenizer "
                             "derives it for WordPiece '##', BPE and Metaspace/ByteLevel vocabularies)")
        starts = eligible & (new_word | ~prev_eligible)  # (B, L)
        word = np.cumsum(starts.reshape(-1)) - 1  # (B*L,); valid where eligible
        return starts, word

    def _select_words(self, rng: np.random.Generator, eligible: np.ndarray, word: np.ndarray) -> np.ndarray:
        """Select each word with mlm_probability: every token's marginal probability stays p."""
        n_words = int(word[-1]) + 1 if word.size else 0
        if n_words == 0:
            return np.zeros_like(eligible)
        chosen = rng.random(n_words, dtype=np.float32) < self.mlm_probability  # (n_words,)
        return eligible & chosen[word].reshape(eligible.shape)

    def _select_spans(self, rng: np.random.Generator, eligible: np.ndarray, starts: np.ndarray,
                      word: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """SpanBERT spans laid out on each row's words; returns the selection and per-token treatment draws.

        The number of spans per row is drawn so that E[words covered] = p * words; spans are then
        placed uniformly at random without overlap and with at least one unselected word between
        them, so every selected run is exactly one span with its drawn length (a span longer than
        its row is cut to the row; spans that no longer fit, only at ratios above ~0.75, are dropped).
        """
        batch = eligible.shape[0]
        n_words = starts.sum(axis=1)  # (B,)
        mean_length = _SPAN_MEAN_IN_ROW[np.minimum(n_words, SPAN_MAX_WORDS)]  # short rows cut spans short
        target = self.mlm_probability * n_words / mean_length  # expected number of spans, (B,)
        n_spans = np.floor(target).astype(np.int64)
        n_spans += rng.random(batch) < target - n_spans
        most = int(n_spans.max())
        if most == 0:
            return np.zeros_like(eligible), None
        # (B, S): span lengths in words, active spans first
        lengths = np.searchsorted(_SPAN_CDF, rng.random((batch, most)), side="right") + 1
        lengths = np.minimum(lengths, n_words[:, None])
        active = np.arange(most) < n_spans[:, None]
        lengths[~active] = 0
        needed = np.cumsum(lengths, axis=1) + np.cumsum(active, axis=1) - 1  # words incl. one-word gaps
        active &= needed <= n_words[:, None]
        lengths[~active] = 0
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
        word_at = np.where(eligible.reshape(-1), word, total_words)  # (B*L,), index W = "not a word"
        selected = inside[word_at].reshape(eligible.shape)
        per_span = rng.random(begin.size)  # one 80/10/10 draw per span
        treatment = per_span[span_of_word[word_at[selected.reshape(-1)]]]
        return selected, treatment

    # ------------------------------------------------------------------ internals: 80/10/10

    def _replace(self, rng: np.random.Generator, ids: np.ndarray, selected: np.ndarray,
                 treatment: np.ndarray | None) -> None:
        """Apply mask / random / keep to the selected positions of `ids`, in place.

        `treatment` holds one uniform draw per selected position (row-major order); spans pass the
        same draw for all their tokens. Random ids come only from non-special ids.
        """
        flat = ids.reshape(-1)  # view
        where = np.flatnonzero(selected)
        if treatment is None:
            treatment = rng.random(where.size)
        flat[where[treatment < self.mask_replace_prob]] = self.mask_token_id
        upper = self.mask_replace_prob + self.random_replace_prob
        randomised = where[(treatment >= self.mask_replace_prob) & (treatment < upper)]
        if randomised.size:
            flat[randomised] = self._replacements[rng.integers(0, self._replacements.size, randomised.size)]


# ---------------------------------------------------------------------- helpers


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < low or \
            (high is not None and int(value) >= high):
        span = f">= {low}" if high is None else f"in [{low}, {high})"
        raise ValueError(f"{name}={value!r} is invalid; it must be an integer {span}")


def _describe_keys(example: Any) -> str:
    return str(sorted(example.keys())) if isinstance(example, Mapping) else f"(not a dict: {type(example).__name__})"


def _flatten(name: str, values: list[Any], dtype: type, total: int) -> np.ndarray:
    """Concatenate one field of all examples into a fresh 1-D array of `dtype`.

    Mixing containers or dtypes (an int32 array next to an int64 one) is refused: it usually
    means two preprocessing paths disagree, and a silent cast would hide that.
    """
    types = set(map(type, values))
    if types <= {list, tuple}:
        items: list[Any] = []
        for value in values:
            items += value
        out: np.ndarray = np.empty(total, dtype=dtype)
        try:  # struct converts Python numbers about 1.5x faster than np.fromiter / np.array
            struct.pack_into(f"{total}{'q' if dtype is np.int64 else 'd'}", out.data, 0, *items)
        except struct.error:
            if dtype is np.float64:  # e.g. word_ids with None for special tokens
                return np.array(items, dtype=np.float64)
            bad = next((v for v in items if not isinstance(v, numbers.Integral) or not -2**63 <= int(v) < 2**63), "?")
            raise ValueError(f"{name} must hold integers only (within int64); found {bad!r}") from None
        return out
    if types == {np.ndarray}:
        arrays = values
    elif all(issubclass(t, torch.Tensor) for t in types):
        arrays = [v.detach().cpu().numpy() for v in values]
    else:
        arrays = []
    if not arrays or len({a.dtype for a in arrays}) > 1:
        kinds = sorted({_kind(v) for v in values})
        if len(kinds) == 1:
            raise ValueError(f"{name} must be a list of ints, a 1-D numpy array or a 1-D tensor; got {kinds[0]}")
        raise ValueError(f"{name}: examples mix {' and '.join(kinds)}; give every example the same type and "
                         "dtype (e.g. all lists of int, or all int64 arrays)")
    if any(a.ndim != 1 for a in arrays):
        raise ValueError(f"{name} must be 1-D per example; got an array of shape "
                         f"{next(a.shape for a in arrays if a.ndim != 1)}")
    if dtype is np.int64 and arrays[0].dtype.kind not in "iub":
        raise ValueError(f"{name} must have an integer dtype, got {arrays[0].dtype}; "
                         "convert it, e.g. .astype(np.int64)")
    return np.concatenate(arrays).astype(dtype, copy=False)


def _kind(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "lists"
    if isinstance(value, np.ndarray):
        return f"{value.dtype} numpy arrays"
    if isinstance(value, torch.Tensor):
        return f"{str(value.dtype).removeprefix('torch.')} tensors"
    return type(value).__name__


def _checked_weights(weights: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """Weights of eligible tokens, floored at 1e-9 of the row maximum so a zero weight still has a
    (tiny) chance when the ratio cannot be met otherwise; 0 for ineligible tokens."""
    w = np.where(eligible, weights, 0.0)  # (B, L)
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError("weights must be finite and >= 0 (e.g. surprisal in nats); fix the 'weights' field")
    top = w.max(axis=1, keepdims=True)
    floor = np.where(top > 0, top * 1e-9, 1.0)
    return np.where(eligible, np.maximum(w, floor), 0.0)


def _inclusion_probabilities(w: np.ndarray, target: np.ndarray) -> np.ndarray:
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


def _first_token_id(tokenizer: Any, names: Sequence[str]) -> int | None:
    for name in names:
        tid = tokenizer.token_to_id(name)
        if tid is not None:
            return tid
    return None


def _continuation_table(tokenizer: Any, vocab_size: int) -> np.ndarray | None:
    """is_continuation[id] for a `tokenizers.Tokenizer`, read once from its vocabulary.

    WordPiece-style models mark continuations ("##ing"); Metaspace ("▁") and ByteLevel ("Ġ")
    models mark word starts instead, so there a token without the marker continues a word.
    Returns None when the tokenizer uses neither convention (then examples need `word_ids`).
    """
    config = json.loads(tokenizer.to_str())
    vocab = tokenizer.get_vocab(with_added_tokens=False)
    table = np.zeros(vocab_size, dtype=bool)
    prefix = config.get("model", {}).get("continuing_subword_prefix")
    if prefix:
        hits = [i for token, i in vocab.items() if token.startswith(prefix) and i < vocab_size]
        table[hits] = True
        return table
    marker = _word_start_marker(config.get("pre_tokenizer")) or _word_start_marker(config.get("decoder"))
    if marker is None:
        return None
    hits = [i for token, i in vocab.items() if not token.startswith(marker) and i < vocab_size]
    table[hits] = True
    return table


def _word_start_marker(component: Any) -> str | None:
    """The word-start marker of a tokenizer.json pre_tokenizer/decoder, searching nested sequences."""
    if isinstance(component, dict):
        kind = component.get("type")
        if kind == "Metaspace":
            return component.get("replacement", "▁")
        if kind == "ByteLevel":
            return "Ġ"
        for child in (component.get("pretokenizers") or []) + (component.get("decoders") or []):
            marker = _word_start_marker(child)
            if marker:
                return marker
    return None
