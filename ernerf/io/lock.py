"""An exclusive lock per folder, so two runs never work on the same subject or stage at once."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from ernerf.errors import ErnerfError

LOCK_NAME = ".lock"


@contextlib.contextmanager
def exclusive_lock(folder: Path | str, what: str) -> Iterator[None]:
    """Hold `<folder>/.lock` while the block runs; a second holder gets an ErnerfError naming the first.

    flock locks die with their process (a kill -9 too), so a crashed run never leaves a stale lock: the
    file may stay behind, the lock does not."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    handle = open(path, "a+")  # noqa: SIM115 - held open for the lock's lifetime
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ErnerfError(f"{what} is in use by another run ({_holder(path)}): wait for it to end, "
                              f"or stop it, then run this again.") from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}))
        handle.flush()
        yield
    finally:
        handle.close()


def _holder(path: Path) -> str:
    """`pid N on host` of the lock's holder, as it wrote itself into the file."""
    try:
        info = json.loads(path.read_text())
        return f"pid {info['pid']} on {info['host']}"
    except (OSError, ValueError, KeyError):
        return "holder unknown"
