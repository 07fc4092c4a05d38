"""What every entry point shares: a user error is one line on stderr and exit status 2, not a traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

from ernerf.errors import ErnerfError

T = TypeVar("T")


def exit_on_user_error(fn: Callable[..., T]) -> Callable[..., T]:
    """Run `fn`; an ErnerfError prints `error: <message>` and exits with status 2 (work already saved stays)."""

    @functools.wraps(fn)
    def wrapper(*args: object, **kwargs: object) -> T:
        try:
            return fn(*args, **kwargs)
        except ErnerfError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)

    return wrapper
