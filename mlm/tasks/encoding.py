"""Labelled text to token ids, with the one text encoder every consumer uses (`mlm.tokenizer.text_encoder`)."""
from __future__ import annotations

from typing import Any, Sequence

from mlm.tokenizer import text_encoder


def encode_texts(tokenizer: Any, texts: Sequence[str], pairs: Sequence[str] | None, max_len: int) -> list[list[int]]:
    """Token ids with the tokenizer's template ([CLS] a [SEP], or [CLS] a [SEP] b [SEP]), truncated to
    `max_len`; a literal "[SEP]" in the text is text, as in the pretraining data."""
    encoder = text_encoder(tokenizer, max_length=max_len)
    inputs = list(zip(texts, pairs)) if pairs is not None else list(texts)
    return [e.ids for e in encoder.encode_batch(inputs)]
