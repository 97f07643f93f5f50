"""What the labelled-task builders share: a split that depends only on a source's name, each split
sampled to the size asked for, and a split written as JSON Lines with its counts.

Imported by scripts/make_token_task.py and scripts/make_error_task.py (scripts are not a package:
they put this folder on sys.path, as scripts/pretraining_curve.py does).
"""
from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

SPLITS = ("train", "dev", "test")


def split_of(name: str, dev: float, test: float) -> str:
    """train / dev / test by a blake2b hash of a source's name (a file's relative path): stable
    across machines and runs, and every item of one source lands in the same split."""
    u = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big") / 2 ** 64
    return "test" if u < test else ("dev" if u < test + dev else "train")


def pick(splits: dict[str, list[Any]], sizes: dict[str, int], rng: random.Random, where: str,
         shuffle: bool) -> dict[str, list[Any]]:
    """A random sample of sizes[split] items per split (0: all of them, in order), drawn in split
    order from one generator; ValueError naming the split and its --<split>-size when too few."""
    picked = {}
    for name, items in splits.items():
        if sizes[name] and len(items) < sizes[name]:
            raise ValueError(f"only {len(items)} {name} examples under {where} (asked for {sizes[name]}); "
                             f"lower --{name}-size")
        picked[name] = rng.sample(items, sizes[name]) if sizes[name] else list(items)
        if shuffle:
            rng.shuffle(picked[name])
    return picked


def write_tagged(path: Path, examples: list[dict]) -> dict[str, Any]:
    """Write {"tokens", "tags", ...} examples one per line; their sentence, word and tag counts."""
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(ex) + "\n" for ex in examples)
    tags = Counter(t for ex in examples for t in ex["tags"])
    return {"sentences": len(examples), "words": sum(len(ex["tokens"]) for ex in examples),
            "tags": dict(sorted(tags.items()))}
