"""Throughput of mlm.collate.MLMCollator against transformers' DataCollatorForLanguageModeling.

Both collators see the same 128-token examples (a WordPiece tokenizer trained with
mlm.tokenizer.train_tokenizer on the Python stdlib's pydoc topics), batch 32, in one process;
the contenders alternate round by round so drift in machine load hits them equally. Prints one
JSON object; exits 1 when a target ratio is missed (token >= 5x, whole word >= 10x).

    python scripts/bench_collate.py [--rounds 7] [--seconds 0.6]

HF inputs are its fast path: lists of ids for token masking; for whole-word masking, dicts with
input_ids, offset_mapping and special_tokens_mask (it needs character offsets, and without the
mask it runs a Python loop per example). Note that HF switches 80/10/10 off for whole words;
ours keeps it. Ours gets plain lists of ids for both (words come from the vocabulary's "##").
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path
from collections.abc import Callable
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pydoc_data.topics  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import DataCollatorForLanguageModeling, PreTrainedTokenizerFast  # noqa: E402

from mlm.collate import MLMCollator  # noqa: E402
from mlm.tokenizer import CLS, MASK, PAD, SEP, UNK, train_tokenizer  # noqa: E402

SEQ_LEN = 128
BATCH = 32
TARGETS = {"token": 5.0, "whole_word": 10.0}


def build_examples(vocab_size: int) -> tuple[Any, list[dict[str, list]]]:
    """128-token windows ([CLS] + 126 tokens + [SEP]) with ids, offsets and word ids."""
    texts = list(pydoc_data.topics.topics.values())
    tok = train_tokenizer(texts, vocab_size)
    cls_id, sep_id = tok.token_to_id(CLS), tok.token_to_id(SEP)
    body = SEQ_LEN - 2
    examples = []
    for enc in tok.encode_batch(texts, add_special_tokens=False):
        ids, offsets, words = enc.ids, enc.offsets, enc.word_ids
        for start in range(0, len(ids) - body + 1, body):
            stop = start + body
            examples.append({
                "input_ids": [cls_id] + ids[start:stop] + [sep_id],
                "offset_mapping": [(0, 0)] + offsets[start:stop] + [(0, 0)],
                "special_tokens_mask": [1] + [0] * body + [1],
                "word_ids": [None] + words[start:stop] + [None],
            })
    return tok, examples


def batches_of(items: list[Any]) -> list[list[Any]]:
    return [items[i:i + BATCH] for i in range(0, len(items) - BATCH + 1, BATCH)]


def bench(contenders: dict[str, tuple[Callable[[list[Any]], Any], list[list[Any]]]],
          rounds: int, seconds: float) -> dict[str, float]:
    """Examples/s of each contender: alternating timed rounds of ~`seconds` each, summed."""
    for fn, batches in contenders.values():  # warm up (imports, caches, first allocations)
        for batch in batches[:3]:
            fn(batch)
    spent = {name: 0.0 for name in contenders}
    done = {name: 0 for name in contenders}
    names = list(contenders)
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            fn, batches = contenders[name]
            count, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                for batch in batches:
                    fn(batch)
                count += len(batches) * BATCH
            spent[name] += time.perf_counter() - start
            done[name] += count
    return {name: done[name] / spent[name] for name in contenders}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds per contender")
    parser.add_argument("--seconds", type=float, default=0.6, help="seconds per contender per round")
    parser.add_argument("--vocab-size", type=int, default=2000,
                        help="small enough that words split into pieces (~8%% of tokens are '##' pieces)")
    args = parser.parse_args()
    torch.set_num_threads(2)

    tok, examples = build_examples(args.vocab_size)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=UNK, pad_token=PAD, cls_token=CLS,
                                     sep_token=SEP, mask_token=MASK)
    hf_token = DataCollatorForLanguageModeling(hf_tok, mlm_probability=0.15, seed=0)
    with warnings.catch_warnings():  # HF warns that it turns 80/10/10 off for whole words
        warnings.simplefilter("ignore")
        hf_whole = DataCollatorForLanguageModeling(hf_tok, whole_word_mask=True, mlm_probability=0.15, seed=0)
    ours_token = MLMCollator.from_tokenizer(tok, seed=0)
    ours_whole = MLMCollator.from_tokenizer(tok, strategy="whole_word", seed=0)

    lists = batches_of([e["input_ids"] for e in examples])
    ids_dicts = batches_of([{"input_ids": e["input_ids"]} for e in examples])
    hf_whole_inputs = batches_of([{k: e[k] for k in ("input_ids", "offset_mapping", "special_tokens_mask")}
                                  for e in examples])
    word_id_dicts = batches_of([{k: e[k] for k in ("input_ids", "word_ids")} for e in examples])

    pieces = np.concatenate([e["input_ids"] for e in examples])
    continuation_share = float(ours_whole.is_continuation[pieces].mean())

    started = time.perf_counter()
    rates = bench({
        "hf_token": (hf_token, lists),
        "ours_token": (ours_token, lists),
        "hf_token_dicts": (hf_token, ids_dicts),
        "ours_token_dicts": (ours_token, ids_dicts),
        "hf_whole_word": (hf_whole, hf_whole_inputs),
        "ours_whole_word": (ours_whole, lists),
        "ours_whole_word_word_ids": (ours_whole, word_id_dicts),
    }, args.rounds, args.seconds)
    ratios = {
        "token": rates["ours_token"] / rates["hf_token"],
        "token_dicts": rates["ours_token_dicts"] / rates["hf_token_dicts"],
        "whole_word": rates["ours_whole_word"] / rates["hf_whole_word"],
        "whole_word_word_ids": rates["ours_whole_word_word_ids"] / rates["hf_whole_word"],
    }
    meets = {name: ratios[name] >= floor for name, floor in TARGETS.items()}
    print(json.dumps({
        "setup": {"seq_len": SEQ_LEN, "batch_size": BATCH, "examples": len(examples),
                  "vocab_size": tok.get_vocab_size(), "tokenizer": "wordpiece (mlm.tokenizer.train_tokenizer)",
                  "continuation_token_share": round(continuation_share, 3),
                  "rounds": args.rounds, "seconds_per_round": args.seconds, "torch_threads": torch.get_num_threads(),
                  "python": platform.python_version(), "torch": torch.__version__,
                  "transformers": transformers.__version__, "numpy": np.__version__},
        "examples_per_s": {name: round(rate) for name, rate in rates.items()},
        "ratio": {name: round(value, 2) for name, value in ratios.items()},
        "targets": TARGETS,
        "meets_targets": meets,
        "bench_seconds": round(time.perf_counter() - started, 1),
    }, indent=2))
    return 0 if all(meets.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
