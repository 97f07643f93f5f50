"""Corpus -> tokenized fixed-length blocks on disk, and the dataset that reads them back.

`prepare_data(cfg)` reads the corpus (files, a Hugging Face `datasets` dataset, or, when neither
is given, a built-in corpus made from the Python standard library's docstrings), trains or loads
the tokenizer, and writes each split as shards of blocks:

    stream = doc tokens [SEP] doc tokens [SEP] ...      (no template special tokens)
    block  = [CLS] + the next seq_len - 1 tokens of the stream

A document longer than a block continues in the next block. No token is dropped except the
final partial block of each split; its size is reported in `stats`. Documents go to the
validation split by a hash of their text, so the split does not depend on file order or
thread count, and duplicate documents always land in the same split.

The pass is streaming (memory does not grow with the corpus), resumable (an interrupted run
continues after its last checkpoint, verifying the finished shards by size and sha256) and
cached (a re-run with the same sources, tokenizer and settings reuses the shards).
Dirty input is repaired or skipped with a counted warning naming file and line; see
`SKIP_REASONS` and `REPAIR_REASONS` and the "Dirty input policy" section of README.md.

`BlockDataset` reads the shards by random access (np.memmap); `epoch_permutation` is the
deterministic per-epoch shuffle and `BatchPlan` the global batch of any step.

One job per module, in the order the data flows:

    sources          which files / dataset (entries, globs, directories, the default corpus)
    stdlib_corpus    the default corpus (stdlib docstrings)
    decoding         compression, text encodings, lines with NUL / undecodable-byte repair
    readers          Source, and one document stream per format (the format registry)
    fasta            the FASTA reader: one document per record
    report           the dirty-input report (SKIP_REASONS, REPAIR_REASONS)
    cutting          where a long text is cut (at whitespace)
    documents        the piece stream: cleaning, long documents, split hash, resume position
    tokenizer_sample training (or extending) the tokenizer on an even sample of the corpus
    pipeline         the pipelined tokenize -> pack -> write pass, with checkpoints
    shards           shard files, index.json, progress.json
    prepare          prepare_data: cache key, lock, tokenizer, reuse; format_summary
    blocks           BlockDataset, epoch_permutation, BatchPlan
"""
from mlm.data.blocks import BatchPlan, BlockDataset, epoch_permutation
from mlm.data.prepare import PreparedData, format_summary, prepare_data
from mlm.data.report import REPAIR_REASONS, SKIP_REASONS
from mlm.data.stdlib_corpus import stdlib_documents

__all__ = ["prepare_data", "PreparedData", "BlockDataset", "epoch_permutation", "BatchPlan", "stdlib_documents",
           "format_summary", "SKIP_REASONS", "REPAIR_REASONS"]
