"""Tokenizer training and loading, and the one definition of which ids are special.

`special_token_ids` is the single source of truth for the ids that the collator never
selects and the model's logits exclude (set to -inf): both read it from here, so a label
can never be a token of probability zero.
"""
from __future__ import annotations

import hashlib
import itertools
import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from mlm.errors import UserError

if TYPE_CHECKING:
    from mlm.model.config import ModelConfig

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = [PAD, UNK, CLS, SEP, MASK]


def special_token_ids(tokenizer: Any) -> list[int]:
    """Sorted ids of every special token of a `tokenizers.Tokenizer` or a transformers tokenizer."""
    if isinstance(tokenizer, Tokenizer):
        ids = {i for i, tok in tokenizer.get_added_tokens_decoder().items() if tok.special}
        for name in SPECIAL_TOKENS:  # tokens of a hand-made vocab that were never "added"
            tid = tokenizer.token_to_id(name)
            if tid is not None:
                ids.add(tid)
        return sorted(ids)
    if hasattr(tokenizer, "all_special_ids"):  # transformers PreTrainedTokenizer(Fast)
        return sorted(set(int(i) for i in tokenizer.all_special_ids))
    raise TypeError(f"cannot read special tokens from {type(tokenizer).__name__}; "
                    "pass a tokenizers.Tokenizer or a transformers tokenizer")


def model_config_for(model_cfg: "ModelConfig", tokenizer: Tokenizer) -> "ModelConfig":
    """The model config with the vocabulary facts taken from the tokenizer: size (when 0), pad id and
    special ids (the one source of the ids the model sets to -inf and the collator never selects)."""
    return model_cfg.with_vocabulary(tokenizer.get_vocab_size(), token_id(tokenizer, PAD),
                                     special_token_ids(tokenizer))


def token_id(tokenizer: Tokenizer, token: str) -> int:
    tid = tokenizer.token_to_id(token)
    if tid is None:
        raise UserError(f"tokenizer has no {token} token; it needs {', '.join(SPECIAL_TOKENS)}")
    return tid


def _bert_normalizer() -> normalizers.Normalizer:
    return normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True)


def _wordpiece(vocab_size: int, show_progress: bool) -> tuple[Tokenizer, trainers.Trainer]:
    tok = Tokenizer(models.WordPiece(unk_token=UNK))
    tok.normalizer, tok.pre_tokenizer = _bert_normalizer(), pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                          continuing_subword_prefix="##", show_progress=show_progress)


def _bpe(vocab_size: int, show_progress: bool) -> tuple[Tokenizer, trainers.Trainer]:
    tok = Tokenizer(models.BPE(unk_token=UNK, continuing_subword_prefix="##"))
    tok.normalizer, tok.pre_tokenizer = _bert_normalizer(), pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                    continuing_subword_prefix="##", show_progress=show_progress)


def _metaspace_bpe(vocab_size: int, show_progress: bool) -> tuple[Tokenizer, trainers.Trainer]:
    """BPE that marks word starts ("▁") instead of continuations ("##"): the `tokenizers` BPE trainer
    is deterministic across processes only without a continuing-subword prefix (huggingface/tokenizers
    #1794). BERT normalisation and pre-tokenisation, so words and punctuation are split as WordPiece
    splits them, and every pre-token starts with "▁": whole-word masking keeps its word boundaries."""
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.normalizer = _bert_normalizer()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.BertPreTokenizer(), pre_tokenizers.Metaspace()])
    tok.decoder = decoders.Metaspace()
    return tok, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                    show_progress=show_progress)


def _unigram(vocab_size: int, show_progress: bool) -> tuple[Tokenizer, trainers.Trainer]:
    tok = Tokenizer(models.Unigram())
    tok.normalizer = _bert_normalizer()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(),
                                                 pre_tokenizers.Metaspace()])
    tok.decoder = decoders.Metaspace()
    return tok, trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, unk_token=UNK,
                                        show_progress=show_progress)


def _char(vocab_size: int, show_progress: bool) -> tuple[Tokenizer, trainers.Trainer]:
    """One token per character (proteins, DNA): each character is its own pre-token, the vocabulary is
    the corpus's most frequent characters (ties in code-point order), the rest map to [UNK]. No
    normaliser: case, spaces and every other character are kept as they are."""
    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return tok, trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                          show_progress=show_progress)


# Code-aware pre-tokens: identifiers and numbers (underscores included) with an optional leading space,
# punctuation runs with an optional leading space, whitespace runs (the last space stays with the next
# word, as in GPT-2). No contractions: `'s` inside a string literal is not English.
CODE_PRE_TOKENS = r" ?[\p{L}\p{N}_]+| ?[^\s\p{L}\p{N}_]+|\s+(?!\S)|\s+"


def _byte_bpe(vocab_size: int, show_progress: bool) -> tuple[Tokenizer, trainers.Trainer]:
    """Byte-level BPE for source code: no normaliser, every byte is in the alphabet (no [UNK]), and
    spaces, tabs and newlines are tokens ("Ġ", "ĉ", "Ċ" and their merges, e.g. a newline plus an
    indent), so `decode(encode(text)) == text` exactly. Deterministic like metaspace_bpe (no
    continuing-subword prefix)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CODE_PRE_TOKENS), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    return tok, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=show_progress,
                                    initial_alphabet=pre_tokenizers.ByteLevel.alphabet())


# kind -> (untrained tokenizer, its trainer). Deterministic across processes (tested, three processes each):
# metaspace_bpe, char, byte_bpe. Not (huggingface/tokenizers#1794; measured with tokenizers 0.23.3):
# wordpiece, bpe, unigram.
RECIPES = {"metaspace_bpe": _metaspace_bpe, "wordpiece": _wordpiece, "bpe": _bpe, "unigram": _unigram,
           "char": _char, "byte_bpe": _byte_bpe}
DETERMINISTIC_KINDS = ("metaspace_bpe", "char", "byte_bpe")


def train_tokenizer(texts: Iterable[str], vocab_size: int, kind: str = "metaspace_bpe",
                    length: int | None = None, show_progress: bool = False) -> Tokenizer:
    """Train a tokenizer of `kind` (see `RECIPES`) on `texts`, with BERT's special tokens and
    [CLS] x [SEP] template. `show_progress` turns on the trainer's own progress bars."""
    recipe = RECIPES.get(kind)
    if recipe is None:
        raise UserError(f"data.tokenizer_type: unknown kind {kind!r}; choose one of {', '.join(RECIPES)}")
    tok, trainer = recipe(vocab_size, show_progress)
    tok.train_from_iterator(texts, trainer=trainer, length=length)
    cls_id, sep_id = tok.token_to_id(CLS), tok.token_to_id(SEP)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}", pair=f"{CLS} $A {SEP} $B:1 {SEP}:1",
        special_tokens=[(CLS, cls_id), (SEP, sep_id)])
    return tok


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a `tokenizer.json`, or the one inside a folder, with a one-line error when it can't."""
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise UserError(f"{path}: tokenizer file not found")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises a bare Exception on bad JSON
        raise UserError(f"{path}: not a valid tokenizers JSON file ({str(err).splitlines()[0][:200]})") from None
    for name in (PAD, MASK):
        if tok.token_to_id(name) is None:
            raise UserError(f"{path}: tokenizer has no {name} token; MLM needs {PAD} and {MASK}")
    return tok


def text_encoder(tokenizer: Tokenizer, max_length: int = 0) -> Tokenizer:
    """The copy of `tokenizer` that every consumer encodes text with (pretraining data, fine-tuning,
    probing, scoring): a literal "[MASK]" or "[SEP]" in the text is read as text, never as the special
    token, no padding, and truncation only when `max_length` > 0. The tokenizer passed in is unchanged."""
    tok = Tokenizer.from_str(tokenizer.to_str())
    tok.no_padding()
    if max_length > 0:
        tok.enable_truncation(max_length=max_length)
    else:
        tok.no_truncation()
    tok.encode_special_tokens = True
    return tok


def tokenizer_hash(tokenizer: Tokenizer) -> str:
    """A short content hash: caches built with one tokenizer are never reused with another."""
    canonical = json.dumps(json.loads(tokenizer.to_str()), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


# ------------------------------------------------------------------ what a tokenizer is, and extending one

EXTENDABLE_KINDS = ("metaspace_bpe", "byte_bpe", "wordpiece")
EXTENSION_VERSION = 1
"""Part of the cache name of an extended tokenizer: bump it when `extend_tokenizer` would give another result."""


def tokenizer_kind(tokenizer: Tokenizer) -> str:
    """The `RECIPES` kind a tokenizer was built as, read from its tokenizer.json; "other" when none fits
    (a GPT-2-style byte-level BPE counts as byte_bpe)."""
    config = json.loads(tokenizer.to_str())
    model = config.get("model") or {}
    pre = json.dumps(config.get("pre_tokenizer"))
    kind = model.get("type")
    if kind == "WordLevel" and '"Split"' in pre:
        return "char"
    if kind in ("WordPiece", "Unigram"):
        return kind.lower()
    if kind == "BPE" and model.get("continuing_subword_prefix"):
        return "bpe"
    if kind == "BPE" and '"ByteLevel"' in pre:
        return "byte_bpe"
    if kind == "BPE" and '"Metaspace"' in pre:
        return "metaspace_bpe"
    return "other"


def word_counts(tokenizer: Tokenizer, texts: Iterable[str]) -> Counter:
    """How often each word occurs in `texts`, a word being a pre-token as the tokenizer's model sees it
    (normalised and pre-tokenized: "▁pneumonia" for metaspace_bpe, "Ġself" for byte_bpe)."""
    counts: Counter = Counter()
    normalizer, pre = tokenizer.normalizer, tokenizer.pre_tokenizer
    for text in texts:
        if normalizer is not None:
            text = normalizer.normalize_str(text)
        if pre is None:
            counts[text] += 1
        else:
            counts.update(piece for piece, _ in pre.pre_tokenize_str(text))
    return counts


def extend_tokenizer(tokenizer: Tokenizer, texts: Iterable[str], max_new: int) -> Tokenizer:
    """`tokenizer` with up to `max_new` more tokens: the words of `texts` that it splits, most frequent
    first (ties in string order), each made one token. Every old id keeps its token; new ids follow
    the old ones. BPE (metaspace_bpe, byte_bpe): each word gets the merges that join its current pieces
    left to right, appended after the old merges (which therefore still apply first), so a word of k
    pieces costs up to k - 1 tokens (the intermediate joins are tokens too); WordPiece: the word is
    added to the vocabulary. Deterministic: the same inputs give the same file."""
    kind = tokenizer_kind(tokenizer)
    if kind not in EXTENDABLE_KINDS:
        what = "a character tokenizer (one token per character) cannot be extended by subwords" if kind == "char" \
            else f"extending a {kind} tokenizer is not supported (only {', '.join(EXTENDABLE_KINDS)})"
        raise UserError(f"data.extend_vocab: {what}; set data.extend_vocab=0")
    counts = word_counts(tokenizer, texts)
    config = json.loads(tokenizer.to_str())
    model = config["model"]
    unk = model.get("unk_token")
    split_words = (w for w, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))
                   if w not in model["vocab"] and _is_split(tokenizer, w, unk))
    next_id = tokenizer.get_vocab_size(with_added_tokens=True)
    if kind == "wordpiece":
        for word in itertools.islice(split_words, max_new):
            model["vocab"][word] = next_id
            next_id += 1
    else:
        _add_bpe_words(model, split_words, max_new, next_id)
    return Tokenizer.from_str(json.dumps(config, ensure_ascii=False))


def _is_split(tokenizer: Tokenizer, word: str, unk: str | None) -> bool:
    pieces = [t.value for t in tokenizer.model.tokenize(word)]
    return len(pieces) > 1 and unk not in pieces


def _add_bpe_words(model: dict, words: Iterable[str], max_new: int, next_id: int) -> None:
    """Append to a BPE model's vocab and merges what makes each word one token, while it fits in
    `max_new` new tokens. A word's pieces are joined by the merge tree that needs the fewest new
    tokens (joins that are already tokens are free); a word the result would not make one token is
    left out (checked by running the merges)."""
    vocab, merges = model["vocab"], model["merges"]
    as_strings = bool(merges) and isinstance(merges[0], str)  # older tokenizer.json files: "a b"
    ranks = {tuple(m.split(" ", 1)) if as_strings else tuple(m): r for r, m in enumerate(merges)}
    budget = max_new
    for tried, word in enumerate(words):
        if budget <= 0 or tried >= MAX_EXTENSION_TRIES * max_new:  # the rest cost more than what is left
            return
        if len(word) > MAX_EXTENSION_WORD or any(ch not in vocab for ch in word):
            continue
        pieces = _bpe_segments(list(word), ranks)
        if len(pieces) < 2:
            continue
        joins = _cheapest_joins(pieces, vocab)
        new = [a + b for a, b in joins if a + b not in vocab]
        if len(new) > budget:
            continue
        added = [pair for pair in joins if pair not in ranks]
        for pair in added:
            ranks[pair] = len(ranks)
        if _bpe_segments(list(word), ranks) != [word]:  # an old merge took over half-way: leave the word out
            for pair in added:
                del ranks[pair]
            continue
        merges.extend(" ".join(pair) if as_strings else list(pair) for pair in added)
        for token in new:
            vocab[token] = next_id
            next_id += 1
        budget -= len(new)


MAX_EXTENSION_WORD = 64
"""Longer pre-tokens (runs of punctuation or spaces) are never made one token."""
MAX_EXTENSION_TRIES = 50
"""At most this many split words per new token are tried (the budget may end with a few unused)."""


def _cheapest_joins(pieces: list[str], vocab: dict) -> list[tuple[str, str]]:
    """The merges (children before parents) that join `pieces` into one token with the fewest joins
    that are not tokens yet: a binary tree over the pieces, by dynamic programming over ranges."""
    k = len(pieces)
    text = ["".join(pieces[i:j + 1]) for i in range(k) for j in range(k)]  # text[i * k + j]
    cost: dict[tuple[int, int], tuple[int, int]] = {(i, i): (0, -1) for i in range(k)}
    for width in range(1, k):
        for i in range(k - width):
            j = i + width
            own = 0 if (i, j) != (0, k - 1) and text[i * k + j] in vocab else 1
            cost[i, j] = min((cost[i, m][0] + cost[m + 1, j][0] + own, m) for m in range(i, j))
    joins: list[tuple[str, str]] = []

    def build(i: int, j: int) -> None:
        if i == j:
            return
        m = cost[i, j][1]
        build(i, m)
        build(m + 1, j)
        joins.append((text[i * k + m], text[(m + 1) * k + j]))

    build(0, k - 1)
    return joins


def _bpe_segments(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """BPE as the `tokenizers` model applies it: repeatedly join the leftmost pair of lowest rank."""
    while len(symbols) > 1:
        rank, i = min((ranks.get(pair, 1 << 62), i) for i, pair in enumerate(zip(symbols, symbols[1:])))
        if rank == 1 << 62:
            break
        symbols[i:i + 2] = [symbols[i] + symbols[i + 1]]
    return symbols


def replaced_pieces(old: Tokenizer, new: Tokenizer) -> dict[int, list[int]]:
    """For each id of `new` that `old` does not have: the old ids its token splits into under `old`'s
    model ([UNK] left out), from which a new embedding is initialised. A `new` that gives an old token
    another id, or drops one, is refused."""
    old_vocab, new_vocab = old.get_vocab(with_added_tokens=True), new.get_vocab(with_added_tokens=True)
    moved = next((t for t, i in old_vocab.items() if new_vocab.get(t) != i), None)
    if moved is not None:
        raise UserError(f"the tokenizer does not keep the old ids (token {moved!r} was id {old_vocab[moved]}, "
                        f"now {new_vocab.get(moved)})")
    unk = old.token_to_id(UNK)
    return {i: [t.id for t in old.model.tokenize(token) if t.id != unk]
            for token, i in sorted(new_vocab.items(), key=lambda item: item[1]) if token not in old_vocab}


def batched(items: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
