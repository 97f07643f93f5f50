"""Build a small labeled task from text on this machine: which *topic* of the standard library a
docstring comes from.

    python scripts/make_classification_task.py --out data/stdlib_topics

Labels are topics that each span several modules (e.g. "concurrency" = asyncio, threading,
multiprocessing, concurrent, queue, ...), and every module name of a topic is replaced by the
word "module" in its docstrings, so the label is not written in the text: a classifier has to
go by what the docstring talks about (coroutines, widgets, headers, archives...). Only
function/class/method docstrings are used (no module docstrings), the first paragraph, at
least 40 characters; a text found under two topics is dropped. Every label gets the same
number of train / dev / test examples; the train split is small on purpose (120 per label by
default), the regime where pretraining is supposed to pay off.

Note on overlap: `configs/base.yaml` pretrains on the standard library's docstrings, so the
pretrained model has seen these texts, without labels (the semi-supervised / task-adaptive
pretraining setting). `--root` builds the same kind of task from any other folder of Python
packages (e.g. site-packages, with `--topics-json`) for text the model has never seen.

`--pairs` derives a sentence-pair regression task from the same splits instead (for the task
benchmark's regression / pairs column): {"text", "text_pair", "label"} where the label says how
related the two docstrings are: 2.0 when both come from the same module (e.g. two asyncio
docstrings), 1.0 from two modules of the same topic (asyncio and threading), 0.0 from different
topics; a third of the pairs each. Module names are still replaced by "module", so relatedness
has to be read from what the texts talk about. Pairs of a split only use that split's docstrings.
Fine-tune it with `task=regression data.text_pair_field=text_pair` (Pearson / Spearman).

Deterministic: files are read in sorted order and sampled with `--seed`.
"""
from __future__ import annotations

import argparse
import ast
import json
import random
import re
import sys
import sysconfig
from collections import Counter, defaultdict
from pathlib import Path

# topic -> top-level stdlib modules / packages (each has 150+ usable docstrings in CPython 3.11)
TOPICS: dict[str, list[str]] = {
    "concurrency": ["asyncio", "threading", "multiprocessing", "concurrent", "queue", "sched", "selectors",
                    "_threading_local"],
    "gui": ["tkinter", "idlelib", "turtle", "turtledemo"],
    "network_and_mail": ["email", "mailbox", "imaplib", "smtplib", "nntplib", "poplib", "http", "urllib",
                         "xmlrpc", "wsgiref", "socketserver", "ftplib", "ssl", "socket", "mimetypes"],
    "numbers_and_time": ["_pydecimal", "decimal", "fractions", "statistics", "datetime", "_strptime", "ipaddress",
                         "random", "numbers", "calendar", "colorsys"],
    "files_and_archives": ["tarfile", "zipfile", "shutil", "pathlib", "_pyio", "os", "tempfile", "glob", "gzip",
                           "bz2", "lzma", "zipimport", "fileinput", "filecmp", "ntpath", "posixpath", "genericpath"],
    "developer_tools": ["inspect", "typing", "pydoc", "doctest", "pdb", "bdb", "unittest", "ast", "dis", "trace",
                        "profile", "cProfile", "pstats", "tracemalloc", "timeit", "traceback", "warnings"],
    "text_and_markup": ["xml", "html", "json", "csv", "configparser", "plistlib", "textwrap", "difflib", "string",
                        "re", "sre_parse", "sre_compile", "gettext", "locale", "shlex", "tomllib"],
}
SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
MIN_CHARS, MAX_CHARS = 40, 600


def docstrings(path: Path) -> list[tuple[str, str]]:
    """(qualified name, first paragraph) of each function/class docstring in a file (parsed, not imported)."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, OSError, RecursionError):
        return []
    out = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                doc = ast.get_docstring(child, clean=True)
                if doc:
                    out.append((name, doc))
                visit(child, name + ".")

    visit(tree, "")
    return out


def clean(doc: str, names: list[str]) -> str:
    """First paragraph, whitespace collapsed, the topic's module names replaced by "module"."""
    para = re.split(r"\n\s*\n", doc.strip())[0]
    text = " ".join(para.split())
    for name in sorted(names, key=len, reverse=True):
        text = re.sub(rf"(?<![\w.]){re.escape(name.lstrip('_'))}(?!\w)", "module", text, flags=re.IGNORECASE)
    return text[:MAX_CHARS]


def collect(root: Path, topics: dict[str, list[str]]) -> dict[str, list[dict]]:
    by_topic: dict[str, dict[str, dict]] = defaultdict(dict)
    owners: dict[str, set[str]] = defaultdict(set)
    for topic, modules in topics.items():
        names = list(modules) + (["tk", "tcl", "idle"] if topic == "gui" else [])
        for module in modules:
            files = sorted((root / module).rglob("*.py")) if (root / module).is_dir() else [root / f"{module}.py"]
            for f in files:
                if not f.is_file() or SKIP_DIRS & set(f.relative_to(root).parts):
                    continue
                dotted = ".".join(f.relative_to(root).with_suffix("").parts)
                for qualname, doc in docstrings(f):
                    text = clean(doc, names)
                    if len(text) < MIN_CHARS:
                        continue
                    owners[text].add(topic)
                    by_topic[topic].setdefault(text, {"text": text, "label": topic, "source": f"{dotted}.{qualname}"})
    return {t: [r for text, r in rows.items() if len(owners[text]) == 1] for t, rows in by_topic.items()}


def relatedness_pairs(items: list[dict], rng: random.Random) -> list[dict]:
    """As many pairs as items: a third each of same module (2.0), same topic (1.0), other topic (0.0)."""
    module = lambda r: r["source"].split(".")[0]  # noqa: E731  (the top-level module or package)
    by_module: dict[str, list[dict]] = defaultdict(list)
    for r in items:
        by_module[module(r)].append(r)
    pairs = []
    for i, a in enumerate(items):
        kind = i % 3
        if kind == 0:
            pool = [r for r in by_module[module(a)] if r is not a]
        elif kind == 1:
            pool = [r for r in items if r["label"] == a["label"] and module(r) != module(a)]
        else:
            pool = [r for r in items if r["label"] != a["label"]]
        if not pool:  # a module alone in its split, or a topic with one module: fall back to unrelated
            kind, pool = 2, [r for r in items if r["label"] != a["label"]]
        b = rng.choice(pool)
        pairs.append({"text": a["text"], "text_pair": b["text"], "label": float(2 - kind),
                      "relation": ("same_module", "same_topic", "other_topic")[kind],
                      "source": a["source"], "source_pair": b["source"]})
    return pairs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for train.jsonl, dev.jsonl, test.jsonl")
    parser.add_argument("--root", default=sysconfig.get_paths()["stdlib"], help="where the packages are")
    parser.add_argument("--topics-json", default="", help="a JSON file {label: [top-level modules]}")
    parser.add_argument("--train-per-label", type=int, default=120)
    parser.add_argument("--dev-per-label", type=int, default=40)
    parser.add_argument("--test-per-label", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pairs", action="store_true",
                        help="write the sentence-pair relatedness regression task instead (label 0.0 / 1.0 / 2.0)")
    args = parser.parse_args(argv)
    topics = json.loads(Path(args.topics_json).read_text()) if args.topics_json else TOPICS
    rows = collect(Path(args.root), topics)
    need = args.train_per_label + args.dev_per_label + args.test_per_label
    short = {t: len(rows.get(t, [])) for t in topics if len(rows.get(t, [])) < need}
    if short:
        print(f"error: too few docstrings for {short} (need {need} per label); lower the per-label counts",
              file=sys.stderr)
        return 2
    rng = random.Random(args.seed)
    splits: dict[str, list[dict]] = {"train": [], "dev": [], "test": []}
    for topic in sorted(topics):
        picked = rng.sample(sorted(rows[topic], key=lambda r: r["source"]), need)
        a, b = args.train_per_label, args.train_per_label + args.dev_per_label
        splits["train"] += picked[:a]
        splits["dev"] += picked[a:b]
        splits["test"] += picked[b:]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, items in splits.items():
        rng.shuffle(items)
        if args.pairs:
            items[:] = relatedness_pairs(sorted(items, key=lambda r: r["source"]), rng)
            rng.shuffle(items)
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as fh:
            for item in items:
                fh.write(json.dumps(item) + "\n")
    key = "relation" if args.pairs else "label"
    counts = {name: dict(sorted(Counter(r[key] for r in items).items())) for name, items in splits.items()}
    available = {t: len(r) for t, r in sorted(rows.items())}
    print(json.dumps({"out": str(out), "labels": sorted(topics), "available": available,
                      "sizes": {k: len(v) for k, v in splits.items()}, "per_label": counts["train"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
