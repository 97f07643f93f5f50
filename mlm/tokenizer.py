"""Tokenizer training and loading, and the one definition of which ids are special.

`special_token_ids` is the single source of truth for the ids that the collator never
selects and the model's logits exclude (set to -inf): both read it from here, so a label
can never be a token of probability zero.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

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


# kind -> (untrained tokenizer, its trainer). Deterministic across processes: metaspace_bpe.
# Not (huggingface/tokenizers#1794; measured with tokenizers 0.23.3): wordpiece, bpe, unigram.
RECIPES = {"metaspace_bpe": _metaspace_bpe, "wordpiece": _wordpiece, "bpe": _bpe, "unigram": _unigram}
DETERMINISTIC_KINDS = ("metaspace_bpe",)


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


def batched(items: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
