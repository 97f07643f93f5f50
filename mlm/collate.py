"""Dynamic masking for BERT-style MLM: a `DataLoader` collate_fn that other projects import.

Why not `transformers.DataCollatorForLanguageModeling`: its random replacements come from the
whole vocabulary (so they can insert [CLS]/[PAD]/[MASK], which our model gives probability zero),
its whole-word masking needs character offsets, builds a batch x L x L table and drops the
80/10/10 rule, and it finds special tokens with a Python loop per example. Here every decision
is a vectorised numpy operation on the whole padded batch (`mlm.masking`), and the set of ids that
may never be selected or inserted is exactly `mlm.tokenizer.special_token_ids`, the set the model
excludes. Code ported from transformers keeps its seeding convention: with `seed=None` the masks
come from torch's global generator, so `torch.manual_seed` / `transformers.set_seed` reproduce them.

    collator = MLMCollator.from_tokenizer("runs/tok/tokenizer.json", strategy="whole_word")
    loader = DataLoader(dataset, batch_size=32, collate_fn=collator, num_workers=2)
"""
from __future__ import annotations

import json
import numbers
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Mapping, Sequence, Union

import numpy as np
import torch
from tokenizers import Tokenizer
from torch.utils.data import get_worker_info

from mlm.errors import UserError
from mlm.masking import (SPAN_GEOMETRIC_P, SPAN_MAX_WORDS, SPAN_MEAN_WORDS, corrupt, select_spans, select_tokens,
                         select_words, word_index)
from mlm.padding import RowGrid
from mlm.tokenizer import MASK, PAD, load_tokenizer, special_token_ids

__all__ = ["MLMCollator", "STRATEGIES", "IGNORE_INDEX", "SPAN_GEOMETRIC_P", "SPAN_MAX_WORDS", "SPAN_MEAN_WORDS"]

Strategy = Literal["token", "whole_word", "span", "weighted"]
STRATEGIES: tuple[str, ...] = ("token", "whole_word", "span", "weighted")
IGNORE_INDEX = -100  # label of positions that are not predicted (torch's cross_entropy default)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

TokenizerSource = Union[Tokenizer, str, Path, "PreTrainedTokenizerBase"]
Batch = dict[str, Union[torch.Tensor, np.ndarray]]

_STATE_FORMAT = 1
# Per-token fields of dict examples: padded along with input_ids.
_TOKEN_FIELDS = ("attention_mask", "special_tokens_mask", "word_ids", "weights", "token_type_ids")
_MASK_NAMES = (MASK, "<mask>")
_PAD_NAMES = (PAD, "<pad>")
_SEED_BOUND = 2**62  # seeds drawn from torch's global generator lie in [0, 2**62)


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

    Randomness, as transformers' collator does it: with `seed=None` each call draws its masks from
    torch's global generator (in the main process and in DataLoader workers alike), so
    `torch.manual_seed(0)` (or `transformers.set_seed(0)`) before a run reproduces the masks and two
    calls after one seed differ. With `seed` set the collator has its own generator: the sequence of
    batches is reproducible whatever else uses torch's RNG; inside a DataLoader worker it is
    re-seeded from (`seed`, the worker's torch seed), which torch draws from the main process RNG for
    every epoch, so workers and epochs mask differently and a run with `torch.manual_seed` and `seed`
    set reproduces exactly. `state_dict()` checkpoints the own generator.
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
        _check_rates(mlm_probability, mask_replace_prob, random_replace_prob)
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

        self._rng = np.random.default_rng(seed)  # used only with seed set (seed=None draws from torch per call)
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
        selected, treatment = self._select(rng, ids, eligible, fields)
        labels = np.where(selected, ids, IGNORE_INDEX)  # (B, L), before ids are overwritten
        corrupt(rng, ids, selected, treatment, self.mask_token_id, self._replacements, self.mask_replace_prob,
                self.random_replace_prob)

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

    def set_rates(self, mlm_probability: float, mask_replace_prob: float, random_replace_prob: float) -> None:
        """Change the masking rates between calls (a mask-rate schedule); checked like the constructor's."""
        _check_rates(mlm_probability, mask_replace_prob, random_replace_prob)
        self.mlm_probability = float(mlm_probability)
        self.mask_replace_prob = float(mask_replace_prob)
        self.random_replace_prob = float(random_replace_prob)

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

    # ------------------------------------------------------------------ internals

    def _generator(self) -> np.random.Generator:
        """The generator for one call.

        seed=None: a fresh generator seeded from torch's global generator, as transformers draws its
        masks (torch.manual_seed reproduces them; DataLoader workers have their own torch seeds).
        seed set: our own generator, re-seeded once per DataLoader worker (and per epoch unless
        workers persist); without this, every worker would start from the same pickled state.
        """
        if self.seed is None:
            return np.random.default_rng(int(torch.randint(_SEED_BOUND, (), dtype=torch.int64)))
        info = get_worker_info()
        if info is not None and info.seed != self._worker_seed:
            self._rng = np.random.default_rng(np.random.SeedSequence([info.seed, self.seed]))
            self._worker_seed = info.seed
        return self._rng

    def _select(self, rng: np.random.Generator, ids: np.ndarray, eligible: np.ndarray,
                fields: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        """(selected (B, L), per-selected-token treatment draws or None) by the configured strategy."""
        if self.strategy == "weighted" and "weights" not in fields:
            raise ValueError("strategy 'weighted' needs a per-token 'weights' field in every example "
                             "(dicts with input_ids and weights); add it or choose another strategy")
        if not eligible.any():  # e.g. only special tokens: nothing to draw
            return eligible, None
        p = self.mlm_probability
        if self.strategy in ("token", "weighted"):
            return select_tokens(rng, eligible, p, fields.get("weights"), self.exact_count), None
        try:
            in_word, starts, word = word_index(ids, eligible, fields.get("word_ids"), self.is_continuation)
        except ValueError as err:
            raise ValueError(f"strategy {self.strategy!r} {err}") from None
        if self.strategy == "whole_word":
            return select_words(rng, in_word, word, p), None
        return select_spans(rng, in_word, starts, word, p)

    def _columns(self, examples: Sequence[Any]) -> dict[str, list[Any]]:
        """The examples as columns: field name -> one value per example (input_ids first)."""
        if not hasattr(examples, "__len__") or isinstance(examples, (str, bytes, Mapping)):
            raise ValueError(f"examples must be a list of sequences or dicts, got {type(examples).__name__}")
        if len(examples) == 0:
            raise ValueError("examples is empty; pass at least one example (a DataLoader with drop_last=True "
                             "never sends an empty batch)")
        if not isinstance(examples[0], Mapping):
            return {"input_ids": list(examples)}
        keys = examples[0].keys()
        for i, example in enumerate(examples):
            if not isinstance(example, Mapping) or example.keys() != keys:
                raise ValueError(f"example {i} has fields {_describe_keys(example)} but example 0 has "
                                 f"{sorted(keys)}; give every example the same fields")
        if "input_ids" not in keys:
            raise ValueError(f"dict examples need an 'input_ids' field; got {sorted(keys)}")
        if "labels" in keys:
            raise ValueError("examples already have 'labels'; the collator makes them, so remove that field")
        return {key: [example[key] for example in examples] for key in keys}

    def _pad(self, examples: Sequence[Any]) -> tuple[np.ndarray, np.ndarray | None,
                                                      dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Pad input_ids and the per-token fields to (B, L); gather scalar fields into (B,) arrays.

        Also returns the (B, L) real-token mask, or None when no position is padding.
        """
        columns = self._columns(examples)
        seqs = columns.pop("input_ids")
        try:
            lengths = [len(seq) for seq in seqs]
        except TypeError:
            raise ValueError("every example (or its input_ids) must be a sequence of token ids: "
                             "a list of ints, a 1-D numpy array or a 1-D tensor") from None
        grid = RowGrid(lengths, self.pad_to_multiple_of)
        ids = grid.pad("input_ids", seqs, np.int64, self.pad_token_id)
        fields: dict[str, np.ndarray] = {}
        scalars: dict[str, np.ndarray] = {}
        for key, values in columns.items():
            if key in _TOKEN_FIELDS:
                fields[key] = _pad_token_field(grid, key, values)
            elif all(isinstance(v, numbers.Number) or isinstance(v, torch.Tensor) and v.ndim == 0 for v in values):
                scalars[key] = np.asarray([v.item() if isinstance(v, torch.Tensor) else v for v in values])
            else:
                hint = " and pass word_ids instead" if key == "offset_mapping" else ""
                raise ValueError(f"examples have a field {key!r} the collator cannot pad; per-token fields it "
                                 f"understands are input_ids, {', '.join(_TOKEN_FIELDS)}, and numeric scalars "
                                 f"pass through. Remove the field{hint}")
        return ids, grid.valid, fields, scalars


# ---------------------------------------------------------------------- helpers


def _pad_token_field(grid: RowGrid, key: str, values: list[Any]) -> np.ndarray:
    for i, (value, length) in enumerate(zip(values, grid.lengths)):
        if not hasattr(value, "__len__") or len(value) != length:
            found = f"{len(value)} entries" if hasattr(value, "__len__") else type(value).__name__
            raise ValueError(f"example {i}: '{key}' has {found} but input_ids has {length} tokens; "
                             "per-token fields need one entry per token")
    if key == "word_ids":
        word_ids = grid.pad(key, values, np.float64, np.nan)
        word_ids[word_ids < 0] = np.nan  # -1 (or None, read as NaN) = no word
        return word_ids
    if key == "weights":
        return grid.pad(key, values, np.float64, 0.0)
    return grid.pad(key, values, np.int64, 0)


def _check_rates(mlm_probability: Any, mask_replace_prob: Any, random_replace_prob: Any) -> None:
    for name, prob in (("mlm_probability", mlm_probability), ("mask_replace_prob", mask_replace_prob),
                       ("random_replace_prob", random_replace_prob)):
        if not isinstance(prob, numbers.Real) or not 0.0 <= float(prob) <= 1.0:
            raise ValueError(f"{name}={prob!r} is not a probability; set it within [0, 1]")
    if mask_replace_prob + random_replace_prob > 1.0 + 1e-9:
        raise ValueError(f"mask_replace_prob + random_replace_prob = {mask_replace_prob + random_replace_prob:g} "
                         "exceeds 1; lower one of them (the rest, 1 - both, is left unchanged)")


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < low or \
            (high is not None and int(value) >= high):
        span = f">= {low}" if high is None else f"in [{low}, {high})"
        raise ValueError(f"{name}={value!r} is invalid; it must be an integer {span}")


def _describe_keys(example: Any) -> str:
    return str(sorted(example.keys())) if isinstance(example, Mapping) else f"(not a dict: {type(example).__name__})"


def _first_token_id(tokenizer: Any, names: Sequence[str]) -> int | None:
    for name in names:
        tid = tokenizer.token_to_id(name)
        if tid is not None:
            return tid
    return None


def _continuation_table(tokenizer: Any, vocab_size: int) -> np.ndarray | None:
    """is_continuation[id] for a `tokenizers.Tokenizer`, read once from its vocabulary.

    WordPiece-style models mark continuations ("##ing"); Metaspace ("▁") models mark word starts
    instead, so there a token without the marker continues a word. Byte-level models ("Ġ", GPT-2
    style and `byte_bpe` for code) use identifier boundaries: a token continues a word when it begins
    with a letter, a digit, "_" or a non-ASCII byte, and starts one when it begins with a space, a
    newline or tab (an indent), or punctuation, so `foo.bar(x)` is the words `foo`, `.bar`, `(x`, `)`
    and `snake_case` or `__init__` is never cut. WordLevel models (the `char` tokenizer) make every
    token a word: whole-word masking is token masking and spans count characters.
    Returns None when the tokenizer uses none of these conventions (then examples need `word_ids`).
    """
    config = json.loads(tokenizer.to_str())
    vocab = tokenizer.get_vocab(with_added_tokens=False)
    table = np.zeros(vocab_size, dtype=bool)
    model = config.get("model") or {}
    prefix = model.get("continuing_subword_prefix")
    if prefix:
        hits = [i for token, i in vocab.items() if token.startswith(prefix) and i < vocab_size]
        table[hits] = True
        return table
    if model.get("type") == "WordLevel":
        return table
    marker = _word_start_marker(config.get("pre_tokenizer")) or _word_start_marker(config.get("decoder"))
    if marker is None:
        return None
    if marker == "Ġ":
        hits = [i for token, i in vocab.items() if _continues_identifier(token) and i < vocab_size]
    else:
        hits = [i for token, i in vocab.items() if not token.startswith(marker) and i < vocab_size]
    table[hits] = True
    return table


def _byte_level_bytes() -> dict[str, int]:
    """GPT-2's byte-level alphabet: the character that stands for each byte (printable ASCII and
    Latin-1 stand for themselves; the others are shifted to 256 + n, e.g. space -> "Ġ", newline -> "Ċ")."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [b for b in range(256) if b not in kept]
    return {**{chr(b): b for b in kept}, **{chr(256 + n): b for n, b in enumerate(shifted)}}


_BYTE_OF_CHAR = _byte_level_bytes()


def _continues_identifier(token: str) -> bool:
    """A byte-level token continues a word when its first byte is a letter, digit, "_" or part of a
    non-ASCII character; a space, tab, newline or punctuation byte starts a new word."""
    byte = _BYTE_OF_CHAR.get(token[:1])
    if byte is None:
        return False
    return byte >= 0x80 or chr(byte).isalnum() or byte == ord("_")


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
