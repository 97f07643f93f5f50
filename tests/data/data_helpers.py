"""Plain helpers of the mlm.data tests: documents, configs, and the check of a prepared token stream.

Most tests build their input in a tmp folder and check the exact token stream of the shards
against an independent tokenization of the documents it should contain (`check_stream`).
"""
from __future__ import annotations

import hashlib
import random
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from mlm.config import Config
from mlm.data import prepare_data

REPO = Path(__file__).resolve().parents[2]  # as in tests/helpers.py, which imports torch (the data tests need none)
CLS_ID, SEP_ID = 2, 3
WORDS = ("time person year way day thing man world life hand part child eye woman place work week case point "
         "government company number group problem fact be have do say get make go know take see come think look "
         "want give use find tell ask seem feel try leave call good new first last long great little own other old "
         "right big high different small large next early young important few public bad same able to of in for "
         "on with at by from up about into over after the and a that it not he as you this but his they her she "
         "or an will my one all would there their what so out if who which go me when can like no just him").split()


def make_docs(n: int, seed: int = 0, lo: int = 3, hi: int = 40) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))).capitalize() + "." for _ in range(n)]


def make_cfg(tmp_path: Path, files, tok_path: Path | None = None, **data) -> Config:
    cfg = Config(output_dir=str(tmp_path / "run"))
    cfg.log.progress = False
    cfg.data.train_files = [str(f) for f in files]
    cfg.data.seq_len = 16
    cfg.data.validation_fraction = 0.0
    cfg.data.vocab_size = 300
    if tok_path is not None:
        cfg.data.tokenizer = str(tok_path)
    for key, value in data.items():
        setattr(cfg.data, key, value)
    cfg.model.max_seq_len = max(cfg.model.max_seq_len, cfg.data.seq_len)
    cfg.validate()
    return cfg


def run(cfg: Config):
    """prepare_data with its messages collected: (prepared, messages)."""
    messages: list[str] = []
    prepared = prepare_data(cfg, log=messages.append)
    return prepared, messages


def split_of(text: str, fraction: float) -> int:
    """The documented split rule: blake2b-64 of the UTF-8 text, as a fraction of 2**64."""
    if fraction <= 0:
        return 0
    u = int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
    return 1 if u / 2 ** 64 < fraction else 0


def check_stream(prepared, docs: list[str], fraction: float = 0.0) -> None:
    """The shards hold exactly: for each split, its documents' tokens each followed by [SEP],
    cut into [CLS] + (seq_len - 1) blocks, only the final partial block dropped."""
    tok = Tokenizer.from_str(prepared.tokenizer.to_str())
    tok.encode_special_tokens = True
    expected: dict[int, list[int]] = {0: [], 1: []}
    ndocs = {0: 0, 1: 0}
    for doc in docs:
        ids = tok.encode(doc, add_special_tokens=False).ids
        if ids:
            s = split_of(doc, fraction)
            expected[s] += ids + [SEP_ID]
            ndocs[s] += 1
    seq_len = prepared.train.seq_len
    for s, (name, ds) in enumerate((("train", prepared.train), ("validation", prepared.validation))):
        blocks = ds[np.arange(len(ds))]
        assert blocks.shape == (len(ds), seq_len)
        assert (blocks[:, 0] == CLS_ID).all()
        body = blocks[:, 1:].reshape(-1).tolist()
        assert CLS_ID not in body
        assert body == expected[s][: len(body)]
        st = prepared.stats["splits"][name]
        assert st["dropped_tail_tokens"] == len(expected[s]) - len(body)
        assert 0 <= st["dropped_tail_tokens"] < seq_len - 1
        assert st["documents"] == ndocs[s]
    assert prepared.stats["documents"] == ndocs[0] + ndocs[1]


def write_lines(path: Path, docs: list[str], newline: str = "\n", encoding: str = "utf-8") -> Path:
    path.write_bytes(newline.join(docs).encode(encoding) + newline.encode(encoding))
    return path


def shard_bytes(prepared) -> dict[str, bytes]:
    """Every shard file's content, by file name."""
    out = {}
    for ds in (prepared.train, prepared.validation):
        for entry in ds.shards:
            out[entry["file"]] = (ds.directory / entry["file"]).read_bytes()
    return out


def stable(stats: dict) -> dict:
    """The stats without what depends on time, place or history (timings, folder, reused/resumed)."""
    drop = {"seconds", "tokenize_seconds", "documents_per_s", "tokens_per_s", "cache", "reused", "resumed",
            "tokenizer_path", "tokenizer_trained"}
    return {k: v for k, v in stats.items() if k not in drop}


def decoded_documents(prepared) -> list[str]:
    """The documents of the train split, decoded back from the shards (the last one may be cut short:
    the final partial block is not stored)."""
    tok = prepared.tokenizer
    body = prepared.train[np.arange(len(prepared.train))][:, 1:].reshape(-1).tolist()
    sep = tok.token_to_id("[SEP]")
    docs, current = [], []
    for i in body:
        if i == sep:
            docs.append(tok.decode(current))
            current = []
        else:
            current.append(i)
    return docs
