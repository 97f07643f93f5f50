"""Build a token-classification task that needs what masked-LM pretraining learns: which words of
a docstring sentence were corrupted (word-error detection, as grammatical-error-detection
datasets and ELECTRA's replaced-token detection define it).

    python scripts/make_error_task.py --out runs/tasks/docstring_errors

Sentences of prose from the docstrings of the installed packages (site-packages by default: the
same genre as `configs/base.yaml`'s standard-library corpus, but text that pretraining never saw),
lower-cased, get 0, 1 or 2 errors each, never next to one another:

    SUB   one word replaced by a word drawn from the sentences' own word frequencies
          ("return the number of *violet* in the deque")            -> B-SUB
    SWAP  two neighbouring words exchanged ("return the *of number* elements") -> B-SWAP I-SWAP

Why this task: a replacement word is drawn from the same distribution as the words it replaces,
so the word alone says nothing, and a per-token classifier over the word and its neighbours
(scripts/token_baseline.py) can only learn which single features are suspicious, not which
combinations of them are implausible; an encoder from random weights must learn English word
order from the labelled sentences alone. What a model needs is a sense of which word fits its
context, and that is exactly what masked-LM pretraining on unlabelled text of the domain teaches.
The labels are exact (made, not annotated). Splits are by source file (a blake2b hash of its
path); all randomness comes from --seed, and files are read in sorted order.

`--corpus FILE` also writes every docstring of the *training* files (whole, unlabelled, no dev or
test file among them; a sentence found in any training file is a training sentence, so no dev or
test sentence is in it) as JSON Lines {"text": ...}: in-domain text to pretrain on, the way a user
pretrains on their own unlabelled notes before fine-tuning on the few they labelled.
"""
from __future__ import annotations

import argparse
import ast
import json
import random
import re
import sys
import sysconfig
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from task_splits import pick, split_of, write_tagged  # noqa: E402

SKIP_DIRS = {"test", "tests", "testing", "idle_test", "__pycache__"}
WORD = re.compile(r"\w+|[^\w\s]")
SENTENCE_END = re.compile(r"(?<=[a-z0-9)])\.\s+(?=[A-Z])")
NOT_PROSE = re.compile(r"^\s*(>>>|\.\.|:|-|\*|=|\||#|\d+[.)])")
LABELS = ["O", "B-SUB", "I-SUB", "B-SWAP", "I-SWAP"]


def prose_paragraphs(doc: str):
    """Paragraphs of running text: no code, lists, tables, directives or indented blocks."""
    for para in doc.split("\n\n"):
        lines = para.splitlines()
        if not lines or "::" in para or "`" in para:
            continue
        if any(NOT_PROSE.match(line) or line.startswith("    ") for line in lines):
            continue
        yield " ".join(line.strip() for line in lines)


def docstrings_of(path: Path) -> list[str]:
    """The docstrings of a file's module, classes and functions (parsed, never imported)."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, OSError, RecursionError):
        return []
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return [doc for node in ast.walk(tree) if isinstance(node, kinds) and (doc := ast.get_docstring(node, clean=True))]


def sentences_of(docs: list[str], min_words: int, max_words: int) -> list[list[str]]:
    """Lower-cased word lists of the prose sentences in docstrings."""
    out = []
    for doc in docs:
        for para in prose_paragraphs(doc):
            for sentence in SENTENCE_END.split(para):
                words = WORD.findall(sentence.lower())
                alphabetic = sum(w.isalpha() for w in words)
                if min_words <= len(words) <= max_words and alphabetic >= 0.8 * len(words):
                    out.append(words)
    return out


def collect(root: Path, min_words: int, max_words: int, corpus=None) -> dict[str, list[tuple[list[str], str]]]:
    """Sentences per split; with `corpus` (an open text file), the training files' docstrings go there."""
    found: dict[str, list[tuple[tuple[str, ...], str]]] = {"train": [], "dev": [], "test": []}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if SKIP_DIRS & set(Path(rel).parts):
            continue
        split, docs = split_of(rel, dev=0.1, test=0.2), docstrings_of(path)
        if corpus is not None and split == "train":
            corpus.writelines(json.dumps({"text": doc}) + "\n" for doc in docs)
        found[split].extend((tuple(words), rel) for words in sentences_of(docs, min_words, max_words))
    # A sentence copied into many files counts once, and in training if any training file has it,
    # so no dev or test sentence is in the training files (nor in the --corpus written from them).
    splits: dict[str, list[tuple[list[str], str]]] = {"train": [], "dev": [], "test": []}
    seen: set[tuple[str, ...]] = set()
    for split in ("train", "dev", "test"):
        for words, rel in found[split]:
            if words not in seen:
                seen.add(words)
                splits[split].append((list(words), rel))
    return splits


class WordSampler:
    """Draws replacement words with the frequencies they have in the task's sentences."""

    def __init__(self, sentences: list[list[str]]):
        counts = Counter(w for words in sentences for w in words if w.isalpha())
        self.words, self.weights = list(counts), list(counts.values())

    def other_than(self, word: str, rng: random.Random) -> str:
        while True:
            pick = rng.choices(self.words, self.weights)[0]
            if pick != word:
                return pick


def can_corrupt(tokens: list[str], tags: list[str], start: int, width: int) -> bool:
    """Words start..start+width are alphabetic (a swap's two differ) and they and their neighbours are clean."""
    span = tokens[start:start + width]
    around = range(max(0, start - 1), min(len(tokens), start + width + 1))
    return (all(w.isalpha() for w in span) and len(set(span)) == width
            and all(tags[j] == "O" for j in around))


def corrupt(words: list[str], sampler: WordSampler, rng: random.Random) -> dict:
    """0, 1 or 2 errors (one in two sentences has one), each SUB or SWAP, with a clean word between them."""
    tokens, tags = list(words), ["O"] * len(words)
    wanted = rng.choice([0, 1, 1, 2])
    for _ in range(wanted):
        kind = rng.choice(["SUB", "SWAP"])
        width = 1 if kind == "SUB" else 2
        starts = [i for i in range(len(tokens) - width + 1) if can_corrupt(tokens, tags, i, width)]
        if not starts:
            break
        i = rng.choice(starts)
        if kind == "SUB":
            tokens[i] = sampler.other_than(tokens[i], rng)
            tags[i] = "B-SUB"
        else:
            tokens[i], tokens[i + 1] = tokens[i + 1], tokens[i]
            tags[i], tags[i + 1] = "B-SWAP", "I-SWAP"
    return {"tokens": tokens, "tags": tags}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for train.jsonl, dev.jsonl, test.jsonl")
    parser.add_argument("--root", default=sysconfig.get_paths()["purelib"], help="where the .py files are")
    parser.add_argument("--train-size", type=int, default=1500, help="training sentences (0: all)")
    parser.add_argument("--dev-size", type=int, default=300, help="validation sentences (0: all)")
    parser.add_argument("--test-size", type=int, default=600, help="test sentences (0: all)")
    parser.add_argument("--min-words", type=int, default=8)
    parser.add_argument("--max-words", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--corpus", help="also write the training files' docstrings here (JSON Lines, for pretraining)")
    args = parser.parse_args(argv)
    if not Path(args.root).is_dir():
        print(f"error: --root {args.root}: not a folder", file=sys.stderr)
        return 2
    if args.corpus:  # written whole or not at all
        partial = Path(f"{args.corpus}.partial")
        partial.parent.mkdir(parents=True, exist_ok=True)
        with open(partial, "w", encoding="utf-8") as corpus:
            splits = collect(Path(args.root), args.min_words, args.max_words, corpus)
        partial.replace(args.corpus)
    else:
        splits = collect(Path(args.root), args.min_words, args.max_words)
    rng = random.Random(args.seed)
    sizes = {"train": args.train_size, "dev": args.dev_size, "test": args.test_size}
    try:
        picked = pick(splits, sizes, rng, args.root, shuffle=False)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    sampler = WordSampler([words for items in picked.values() for words, _ in items])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stats = {}
    for name, items in picked.items():  # corrupted in split order, from the same generator
        examples = [{**corrupt(words, sampler, rng), "source": rel} for words, rel in items]
        stats[name] = {**write_tagged(out / f"{name}.jsonl", examples), "available": len(splits[name])}
    print(json.dumps({"out": str(out), "labels": LABELS, **stats}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
