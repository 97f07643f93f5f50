"""Build a token-classification (NER-style) task from text on this machine: which words of a
docstring name a parameter of its function, and is that parameter required or optional?

    python scripts/make_token_task.py --out runs/tasks/stdlib_params

Every function and method of the Python standard library with a docstring and at least one
parameter (besides self/cls) becomes one example: the words of its signature, a ":", then the
words of its docstring (up to --max-words, cut at a sentence end when possible), e.g.

    words  sorted ( iterable , * , key = None , reverse = False ) : Return a new list ... the key ...
    tags   O      O O        O O O O   O O    O       O O     O O O      O O  O   O    ... O   B-OPTION

A docstring word is tagged B-PARAM when it is (exactly) the name of a parameter without a default
value, B-OPTION when it names a parameter with one (or *args / **kwargs); everything else,
including the signature itself, is O. Entities are one word long, so the scores are entity
P/R/F1 over those mentions.

Why this task: the label of a word is not determined by the word. "name", "path", "key", "data",
"file", "mode" are parameters in one function and plain English in the next docstring, and
whether a parameter is required depends on whether the signature gives it a default. The answer is
in the sentence — the signature at its start — but usually further away than a window of ±2
words: a per-token classifier over the word and its neighbours (scripts/token_baseline.py) can
only learn which words *tend* to be parameters, while an encoder that reads the whole sentence
can check the signature. The labels are exact (from `ast`, never guessed), and the text is
in-domain for `configs/base.yaml`, which pretrains on the same docstrings (without labels).

Functions whose parameter names are common short English words ("a", "to", "in", ...) are left
out (tagging every article as a parameter would teach nothing). Splits are by source file (a
blake2b hash of its path), so near-identical methods of one class never straddle train and test.
Deterministic: files are read in sorted order and sampled with --seed.
"""
from __future__ import annotations

import argparse
import ast
import json
import random
import re
import sys
import sysconfig
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from task_splits import pick, split_of, write_tagged  # noqa: E402

SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
WORD = re.compile(r"\w+|[^\w\s]")
STOPWORDS = {"a", "an", "the", "to", "in", "of", "is", "it", "as", "at", "by", "be", "or", "and", "for", "on",
             "if", "not", "no", "i", "we", "do", "so", "up"}
SELF = {"self", "cls", "mcs", "metacls"}
MAX_DEFAULT_CHARS = 20


def parameters(args: ast.arguments) -> dict[str, str]:
    """Parameter name -> PARAM (no default) or OPTION (a default, or *args / **kwargs); self/cls left out."""
    out: dict[str, str] = {}
    positional = args.posonlyargs + args.args
    first_default = len(positional) - len(args.defaults)
    for i, arg in enumerate(positional):
        out[arg.arg] = "PARAM" if i < first_default else "OPTION"
    for arg, default in zip(args.kwonlyargs, args.kw_defaults):
        out[arg.arg] = "PARAM" if default is None else "OPTION"
    for arg in (args.vararg, args.kwarg):
        if arg is not None:
            out[arg.arg] = "OPTION"
    for name in SELF:
        out.pop(name, None)
    return out


def signature_words(name: str, args: ast.arguments) -> list[str]:
    """`name ( a , b = 1 , * args , key = None , ** kwargs )` as words (long defaults become ...)."""
    parts: list[str] = []

    def default_text(node: ast.expr) -> str:
        text = ast.unparse(node)
        return text if len(text) <= MAX_DEFAULT_CHARS else "..."

    positional = args.posonlyargs + args.args
    defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    for arg, default in zip(positional, defaults):
        parts.append(arg.arg if default is None else f"{arg.arg}={default_text(default)}")
    if args.vararg is not None:
        parts.append(f"*{args.vararg.arg}")
    elif args.kwonlyargs:
        parts.append("*")
    for arg, default in zip(args.kwonlyargs, args.kw_defaults):
        parts.append(arg.arg if default is None else f"{arg.arg}={default_text(default)}")
    if args.kwarg is not None:
        parts.append(f"**{args.kwarg.arg}")
    return WORD.findall(f"{name}({', '.join(parts)})")


def docstring_words(doc: str, max_words: int) -> list[str]:
    """The docstring's words, cut at the last sentence end within `max_words` (if there is one)."""
    words = WORD.findall(doc)
    if len(words) <= max_words:
        return words
    cut = max((i for i, w in enumerate(words[:max_words]) if w == "."), default=-1)
    return words[:cut + 1] if cut >= max_words // 2 else words[:max_words]


def examples_of(path: Path, root: Path, max_words: int) -> list[dict]:
    """One example per documented function of a file (parsed, never imported)."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, OSError, RecursionError):
        return []
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        doc = ast.get_docstring(node, clean=True)
        params = parameters(node.args)
        if not doc or not params or STOPWORDS & {p.lower() for p in params}:
            continue
        head = signature_words(node.name, node.args) + [":"]
        body = docstring_words(doc, max_words)
        tags = ["O"] * len(head) + [f"B-{params[w]}" if w in params else "O" for w in body]
        out.append({"tokens": head + body, "tags": tags,
                    "source": f"{'.'.join(path.relative_to(root).with_suffix('').parts)}.{node.name}"})
    return out


def collect(root: Path, max_words: int, dev: float, test: float) -> dict[str, list[dict]]:
    splits: dict[str, list[dict]] = {"train": [], "dev": [], "test": []}
    seen: set[tuple[str, ...]] = set()
    for path in sorted(root.rglob("*.py")):
        if SKIP_DIRS & set(path.relative_to(root).parts):
            continue
        for ex in examples_of(path, root, max_words):
            key = tuple(ex["tokens"])
            if key not in seen:  # exact duplicates (e.g. a pure-Python twin of a module) once
                seen.add(key)
                splits[split_of(path.relative_to(root).as_posix(), dev, test)].append(ex)
    return splits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for train.jsonl, dev.jsonl, test.jsonl")
    parser.add_argument("--root", default=sysconfig.get_paths()["stdlib"], help="where the .py files are")
    parser.add_argument("--train-size", type=int, default=1500, help="training sentences (0: all)")
    parser.add_argument("--dev-size", type=int, default=300, help="validation sentences (0: all)")
    parser.add_argument("--test-size", type=int, default=600, help="test sentences (0: all)")
    parser.add_argument("--max-words", type=int, default=80, help="docstring words per example")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    splits = collect(Path(args.root), args.max_words, dev=0.1, test=0.2)
    sizes = {"train": args.train_size, "dev": args.dev_size, "test": args.test_size}
    try:
        picked = pick(splits, sizes, random.Random(args.seed), args.root, shuffle=True)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stats = {name: {**write_tagged(out / f"{name}.jsonl", items), "available": len(splits[name])}
             for name, items in picked.items()}
    print(json.dumps({"out": str(out), "labels": ["O", "B-OPTION", "I-OPTION", "B-PARAM", "I-PARAM"], **stats}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
