"""Writing files so that a full disk or a read-only folder ends in one clear line, never a lost file.

Everything the library writes (checkpoints, shards, metrics, configs) goes through here or through
`StorageError.from_os_error`: writes land in a temporary file that is renamed into place, a failed
write removes its temporary file and raises `StorageError` (a `UserError`: one line naming what was
being written, where, how much space is free, and what to do), and `require_writable` refuses a
folder that cannot be written before any work is done.
"""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from mlm.errors import UserError

TEMP_PREFIX = ".tmp_"


class StorageError(UserError):
    """A write failed (disk full, read-only filesystem, no permission); the message says what to do."""

    @classmethod
    def from_os_error(cls, err: BaseException, what: str, where: str | Path, needed: int | None = None,
                      advice: str = "") -> "StorageError":
        where = Path(where)
        free = free_bytes(where)
        parts = [f"cannot write {what} to {where}: {describe_os_error(err)}"]
        if needed is not None:
            parts.append(f"it needs about {format_bytes(needed)}")
        if free is not None:
            parts.append(f"{format_bytes(free)} free on that filesystem")
        message = "; ".join(parts)
        if is_disk_full(err):
            advice = advice or "free some space, or write to another folder"
        return cls(message + (f". {advice[:1].upper()}{advice[1:]}" if advice else ""))


def is_disk_full(err: BaseException) -> bool:
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(err).lower()
    return "no space left" in text or "disk quota" in text or "unexpected pos" in text


def describe_os_error(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    if is_disk_full(err):
        return "No space left on device"
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0][:200] if lines else type(err).__name__


def free_bytes(path: str | Path) -> int | None:
    """Free bytes on the filesystem holding `path` (or its nearest existing parent); None if unknown."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def format_bytes(n: int | float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def require_writable(folder: str | Path, what: str) -> None:
    """Create `folder` if needed and prove a file can be written in it; else one-line StorageError."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f"{TEMP_PREFIX}write_probe_{os.getpid()}"
        with open(probe, "wb") as fh:
            fh.write(b"ok")
        probe.unlink()
    except OSError as err:
        raise StorageError(f"{folder}: cannot write the {what} there ({describe_os_error(err)}); choose a "
                           "writable folder or fix its permissions") from None


def write_text_atomic(path: str | Path, text: str, what: str) -> None:
    """Write `text` to a temporary file beside `path`, fsync it, rename it over `path`."""
    path = Path(path)
    tmp = path.with_name(f"{TEMP_PREFIX}{path.name}.{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise StorageError.from_os_error(err, what, path, needed=len(text.encode("utf-8"))) from None


def append_text(path: str | Path, text: str, what: str) -> None:
    """Append to a log file; a failed append leaves the lines written before it intact."""
    path = Path(path)
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as err:
        raise StorageError.from_os_error(err, what, path, needed=len(text.encode("utf-8"))) from None


def remove_leftovers(folder: str | Path, prefix: str = TEMP_PREFIX) -> list[Path]:
    """Delete the `prefix*` files and folders a killed write left in `folder`; returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(prefix):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed
