"""One exception type for user mistakes, and the CLI wrapper that turns it into one line.

A user mistake (bad config key, missing data file, broken checkpoint) must end in a single
clear line on stderr and a non-zero exit, never a traceback. Library code raises `UserError`
at the boundary; entry points wrap `main` with `run_cli`.
"""
from __future__ import annotations

import sys
from typing import Callable, Sequence


class UserError(Exception):
    """A mistake the user can fix: the message names the file or key and what is wrong."""


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> None:
    """Run an entry point; print a `UserError` as one line and exit 2."""
    try:
        code = main(argv)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
