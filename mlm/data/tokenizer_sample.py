"""Training the tokenizer on a sample of the corpus (or extending a checkpoint's with words of it).

A tokenizer trained on the whole of a large corpus costs more than the tokenizing pass itself,
and one trained on its first megabytes sees one file's vocabulary. So the sample is at most
data.tokenizer_sample_bytes of training-split text, taken evenly over the whole corpus: a
document is in it when its split hash falls in a slice sized to the budget (the same hash that
decides the split, so validation text never shapes the vocabulary).
"""
from __future__ import annotations

import itertools
import sys
from typing import TYPE_CHECKING, Callable, Iterator

from tokenizers import Tokenizer

from mlm.data.decoding import looks_compressed
from mlm.data.documents import PieceStream, no_usable_text_error
from mlm.data.readers import Source
from mlm.data.report import DirtyInputReport
from mlm.tokenizer import extend_tokenizer, train_tokenizer

if TYPE_CHECKING:  # type hints only: mlm.config imports the model package
    from mlm.config import DataConfig

COMPRESSION_RATIO_GUESS = 4  # a compressed file's text is about this many times its size


class CorpusSample:
    """Texts for the tokenizer trainer: up to `budget` bytes (UTF-8) of the corpus, the last text cut
    to fit. Dirty input is counted in `report` but not warned about (the main pass warns)."""

    def __init__(self, sources: list[Source], d: DataConfig, show_progress: bool):
        self.sources = sources
        self.settings = d
        self.show_progress = show_progress
        self.budget = d.tokenizer_sample_bytes
        self.estimate = sum(s.size * (COMPRESSION_RATIO_GUESS if s.kind == "file" and looks_compressed(s.name)
                                      else 1) for s in sources)
        self.even_fraction = min(1.0, self.budget / self.estimate) if self.estimate else 1.0
        self.report = DirtyInputReport(None)
        self.pieces_seen = 0

    def texts(self, fraction: float, train_only: bool, show: bool = True) -> Iterator[str]:
        """Pieces whose split hash falls in the first `fraction` of the training range (all pieces
        with `train_only` False), until the budget is spent."""
        from tqdm import tqdm

        budget, vf = self.budget, self.settings.validation_fraction
        taken = 0
        stream = PieceStream(self.sources, self.settings, self.report, need_hash=True)
        total = min(budget, int(self.estimate * fraction * 1.1)) if self.estimate else budget
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="tokenizer sample",
                  disable=not (self.show_progress and show), file=sys.stderr, leave=False) as bar:
            for _, _, text, u, _, _ in stream.pieces():
                self.pieces_seen += 1
                if train_only and u < vf:
                    continue
                if fraction < 1.0 and (u - vf) >= fraction * (1.0 - vf):
                    continue
                size = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
                if taken + size > budget:
                    text = text[: budget - taken]
                    size = budget - taken
                taken += size
                bar.update(size)
                yield text
                if taken >= budget:
                    return


def train_on_corpus(d: DataConfig, sources: list[Source], progress: bool,
                    log: Callable[[str], None]) -> Tokenizer:
    """A new tokenizer (data.tokenizer_type, data.vocab_size) trained on an even sample of the
    training split; on a corpus too small to have any, on all of it."""
    sample = CorpusSample(sources, d, progress)
    log(f"training a {d.tokenizer_type} tokenizer (vocab {d.vocab_size:,}) on up to {sample.budget:,} bytes "
        "of the corpus")
    return train_tokenizer(sample_texts(sample, sources), d.vocab_size, d.tokenizer_type, show_progress=progress)


def sample_texts(sample: CorpusSample, sources: list[Source]) -> Iterator[str]:
    """The even sample of the training split; on a corpus too small to have any, all of it."""
    probe = list(itertools.islice(sample.texts(sample.even_fraction, train_only=True, show=False), 1))
    if probe:
        return sample.texts(sample.even_fraction, train_only=True)
    if sample.pieces_seen == 0:
        raise no_usable_text_error(sources, sample.report.skipped)
    return sample.texts(1.0, train_only=False)  # tiny corpus: use whatever there is


def extend_on_corpus(d: DataConfig, sources: list[Source], base: Tokenizer, max_new: int, progress: bool,
                     log: Callable[[str], None]) -> Tokenizer:
    """`base` extended by up to `max_new` tokens learned from the same even sample of the training split
    a trained tokenizer would see (`mlm.tokenizer.extend_tokenizer`)."""
    sample = CorpusSample(sources, d, progress)
    log(f"extending the tokenizer ({base.get_vocab_size(with_added_tokens=True):,} tokens) by up to {max_new:,} "
        f"tokens learned from up to {sample.budget:,} bytes of the corpus")
    extended = extend_tokenizer(base, sample_texts(sample, sources), max_new)
    added = extended.get_vocab_size(with_added_tokens=True) - base.get_vocab_size(with_added_tokens=True)
    log(f"added {added:,} tokens to the tokenizer")
    return extended
