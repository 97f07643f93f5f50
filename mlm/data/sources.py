"""Finding the inputs: data.train_files entries (files, globs, directories), data.hf_dataset, or
the default corpus, as a list of `Source`s in a fixed order.

The order and the fingerprints (path, size, mtime) decide the cache key and the token stream, so
expansion is deterministic: globs and directory walks are sorted, duplicates kept once, hidden
files and the cache folder itself skipped. A mistake in an entry (nothing there, nothing
matching, nothing readable) is a `UserError` naming the entry.

`Source` itself is defined in `mlm.data.readers`, beside the format registry: a directory
contributes the files whose extension a reader claims, so this module depends on the readers,
never the other way round.
"""
from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from mlm.data.decoding import strip_compression_suffix
from mlm.data.readers import KNOWN_EXTENSIONS, Source
from mlm.data.report import DirtyInputReport
from mlm.data.stdlib_corpus import ensure_stdlib_corpus
from mlm.errors import UserError

if TYPE_CHECKING:  # type hints only: mlm.config imports the model package
    from mlm.config import DataConfig


def resolve_sources(d: DataConfig, cache: Path, report: DirtyInputReport,
                    log: Callable[[str], None]) -> list[Source]:
    """Every input of `d` as a Source: the default corpus when none is given, then each
    train_files entry expanded (first occurrence of a file wins), then the dataset."""
    sources: list[Source] = []
    if not d.train_files and not d.hf_dataset:
        sources.append(file_source(ensure_stdlib_corpus(cache, log), "text"))
    seen: set[str] = set()
    cache_abs = os.path.abspath(cache)
    extensions = chosen_extensions(d.extensions)
    for entry in d.train_files:
        for path in expand_entry(str(entry), cache_abs, report, extensions):
            key = os.path.abspath(path)
            if key not in seen:
                seen.add(key)
                sources.append(file_source(Path(path), d.text_field))
    if d.hf_dataset:
        sources.append(dataset_source(d))
    return sources


def file_source(path: Path, text_field: str) -> Source:
    try:
        st = os.stat(path)
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None
    return Source("file", os.path.abspath(path), text_field, st.st_size, st.st_mtime_ns)


def chosen_extensions(extensions: list[str]) -> tuple[str, ...] | None:
    """data.extensions as lower-case suffixes with their dot (`py` -> `.py`); None when none are chosen."""
    if not extensions:
        return None
    return tuple(sorted({"." + str(e).strip().lstrip(".").lower() for e in extensions}))


def expand_entry(entry: str, cache_abs: str, report: DirtyInputReport,
                 extensions: tuple[str, ...] | None = None) -> list[str]:
    """The files one train_files entry names: itself, its glob matches (sorted), or the data files
    in a directory (recursively, sorted). With `extensions` (data.extensions), directories and globs
    contribute only files with those extensions (compressed or not); a file named explicitly always counts."""
    text = os.path.expanduser(entry)
    if not text.strip():
        raise UserError("data.train_files: an entry is empty")
    is_glob = any(c in text for c in "*?[")
    if is_glob:
        matches = sorted(glob.glob(text, recursive=True))
        if not matches:
            raise UserError(f"data.train_files: {entry!r} matches no files")
    else:
        if not os.path.exists(text):
            raise UserError(f"data.train_files: {entry}: no such file or directory")
        matches = [text]
    files: list[str] = []
    for match in matches:
        if os.path.isdir(match):
            found = data_files_in(match, cache_abs, report, extensions)
            if not found and len(matches) == 1:
                hint = "" if extensions else "; set data.extensions to read others, e.g. data.extensions=[.py]"
                names = ", ".join(extensions or KNOWN_EXTENSIONS)
                raise UserError(f"data.train_files: directory {match} has no {names} files "
                                f"(optionally compressed){hint}")
            files.extend(found)
        elif os.path.isfile(match):
            if is_glob and extensions and not has_extension(os.path.basename(match), extensions):
                continue
            if not os.access(match, os.R_OK):
                raise UserError(f"{match}: cannot read (permission denied)")
            files.append(match)
        else:
            raise UserError(f"data.train_files: {match}: not a regular file")
    if not files:
        raise UserError(f"data.train_files: {entry!r} matches no readable data files")
    return files


def has_extension(name: str, extensions: tuple[str, ...]) -> bool:
    return strip_compression_suffix(name).endswith(extensions)


def data_files_in(root: str, cache_abs: str, report: DirtyInputReport,
                  extensions: tuple[str, ...] | None = None) -> list[str]:
    """Files with a known extension (or one of `extensions`) under `root`, sorted; hidden files and
    folders, __pycache__ and the cache folder skipped; without `extensions`, other files are counted
    as `unknown_extension` (with them, other files are what the user left out: not counted)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = os.path.abspath(dirpath)
        if here == cache_abs or here.startswith(cache_abs + os.sep):
            dirnames[:] = []
            continue
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__pycache__")
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = os.path.join(dirpath, name)
            if has_extension(name, extensions or KNOWN_EXTENSIONS):
                found.append(path)
            elif not extensions:
                report.skip("unknown_extension", (path,))
    return found


def dataset_source(d: DataConfig) -> Source:
    """data.hf_dataset as a Source: a local `save_to_disk` folder is fingerprinted by its files'
    sizes and mtimes; a remote name only by name, config and split."""
    name = d.hf_dataset
    if os.path.isdir(os.path.expanduser(name)):
        folder = os.path.abspath(os.path.expanduser(name))
        files = []
        total = 0
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames.sort()
            for f in sorted(filenames):
                st = os.stat(os.path.join(dirpath, f))
                files.append([os.path.relpath(os.path.join(dirpath, f), folder), st.st_size, st.st_mtime_ns])
                total += st.st_size
        return Source("hf", folder, d.text_field, total, 0, {"folder": True, "split": d.hf_split, "files": files})
    return Source("hf", name, d.text_field, 0, 0, {"folder": False, "config": d.hf_config, "split": d.hf_split})
