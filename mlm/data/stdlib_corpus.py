"""The default corpus: English text on every machine with Python, without a download.

When neither data.train_files nor data.hf_dataset is given, pretraining still has to work (a
first run, a test, a smoke check on a cluster without internet). The standard library's
docstrings (parsed with `ast`, never imported) and `pydoc_data.topics` give a few MB of English,
in a fixed order; `ensure_stdlib_corpus` writes them once into the cache as JSON Lines.
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import sys
import sysconfig
from pathlib import Path
from typing import Callable, Iterator

from mlm.data.cutting import cut_point

STDLIB_DOC_CHARS = 2000
STDLIB_MIN_CHARS = 20
STDLIB_CORPUS_VERSION = 1  # part of the corpus file name: bump when the documents change
_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "pydoc_data"}


def stdlib_documents(root: str | Path | None = None, max_chars: int = STDLIB_DOC_CHARS) -> Iterator[str]:
    """English text on every machine with Python: the docstrings of the standard library's .py
    files (parsed with `ast`, never imported) and `pydoc_data.topics`, in a fixed order, split
    at paragraph boundaries into documents of at most `max_chars`, exact duplicates removed."""
    root = Path(root) if root is not None else Path(sysconfig.get_paths()["stdlib"])
    seen: set[bytes] = set()

    def new_parts(doc: str) -> Iterator[str]:
        for part in split_paragraphs(doc, max_chars):
            if len(part) < STDLIB_MIN_CHARS:
                continue
            digest = hashlib.blake2b(part.encode("utf-8", "surrogatepass"), digest_size=16).digest()
            if digest not in seen:
                seen.add(digest)
                yield part

    for path in _python_files(root):
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError, OSError, RecursionError, MemoryError):
            continue
        for doc in _docstrings(tree):
            yield from new_parts(doc)
    if root == Path(sysconfig.get_paths()["stdlib"]) or (root / "pydoc_data").is_dir():
        try:
            from pydoc_data.topics import topics  # a plain dict of strings
        except ImportError:
            topics = {}
        for key in sorted(topics):
            yield from new_parts(topics[key])


def ensure_stdlib_corpus(cache: Path, log: Callable[[str], None]) -> Path:
    """The default corpus file in `cache`, built on first use (one {"text": ...} object per line)."""
    version = ".".join(str(v) for v in sys.version_info[:3])
    dest = cache / "corpus" / f"stdlib-docs-v{STDLIB_CORPUS_VERSION}-py{version}.jsonl"
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    log(f"building the default corpus (standard library docstrings) in {dest} ...")
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    n = 0
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for doc in stdlib_documents():
            f.write(json.dumps({"text": doc}, ensure_ascii=False))
            f.write("\n")
            n += 1
    os.replace(tmp, dest)
    log(f"default corpus: {n:,} documents, {dest.stat().st_size / 1e6:.1f} MB")
    return dest


def split_paragraphs(text: str, max_chars: int) -> list[str]:
    """`text` as parts of at most `max_chars`: whole paragraphs joined while they fit, a longer
    paragraph cut at whitespace."""
    text = text.strip()
    if len(text) <= max_chars:
        return [text] if text else []
    out: list[str] = []
    cur: list[str] = []
    size = 0
    for para in re.split(r"\n\s*\n", text):
        para = para.strip()
        if not para:
            continue
        if len(para) > max_chars:
            if cur:
                out.append("\n\n".join(cur))
                cur, size = [], 0
            while len(para) > max_chars:
                cut = cut_point(para, max_chars)
                out.append(para[:cut].strip())
                para = para[cut:].strip()
            if para:
                cur, size = [para], len(para)
            continue
        if cur and size + 2 + len(para) > max_chars:
            out.append("\n\n".join(cur))
            cur, size = [], 0
        cur.append(para)
        size += len(para) + (2 if size else 0)
    if cur:
        out.append("\n\n".join(cur))
    return [o for o in out if o]


def _python_files(root: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        found.extend(Path(dirpath) / f for f in sorted(filenames) if f.endswith(".py"))
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _docstrings(tree: ast.AST) -> Iterator[str]:
    """Docstrings of the module, its classes and functions (also those nested in if/try blocks)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                yield doc
        children: list[ast.AST] = []
        for attr in ("body", "orelse", "handlers", "finalbody"):
            value = getattr(node, attr, None)
            if isinstance(value, list):
                children.extend(c for c in value if isinstance(c, (ast.stmt, ast.excepthandler)))
        stack.extend(reversed(children))
