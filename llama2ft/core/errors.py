"""User-facing errors: one clear message, no traceback."""
from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

T = TypeVar("T")


class UserError(Exception):
    """A problem with the user's input or config; its message is shown as is."""


class DataError(UserError):
    """A data file that cannot be used (missing, wrong encoding, bad row, ...)."""


class ConfigError(UserError):
    """One or more invalid config values, collected and reported together."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid config ({len(problems)} problem{'s' if len(problems) != 1 else ''}):\n{lines}")


def exit_on_user_error(fn: Callable[..., T]) -> Callable[..., T]:
    """Print a UserError as one `error: ...` message on stderr and exit 2 instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            sys.exit(2)

    return wrapper


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's message (library errors can be pages long)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0][:limit] if lines else type(exc).__name__
