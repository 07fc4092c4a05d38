"""Atomic writes: a killed run leaves either the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ernerf.errors import ErnerfError

TMP_NAME = re.compile(r"\.tmp\.(\d+)\.")  # tmp_path_for's prefix; the number is the writer's pid


def tmp_path_for(path: Path) -> Path:
    """Temporary sibling name used while `path` is being written (same suffix, so writers that
    pick a format from the suffix still work)."""
    path = Path(path)
    return path.with_name(f".tmp.{os.getpid()}.{path.name}")


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary file path; on success rename it onto `path`, on failure delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path_for(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces `path` whole, on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path_for(path)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_text(path: Path | str, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def remove_stale_temporaries(folder: Path | str, skip: tuple[str, ...] = (".logs",),
                             recursive: bool = True) -> list[Path]:
    """Delete the temporaries under `folder` (or only in it) whose writing process is gone (a killed run's)."""
    removed = []
    for top, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if d not in skip]
        for name in [*dirs, *files]:
            match = TMP_NAME.match(name)
            if match and not pid_alive(int(match[1])):
                removed.append(remove(Path(top) / name))
        # a live writer's folder is its own business; a user's output folder is walked no deeper than itself
        dirs[:] = [d for d in dirs if not TMP_NAME.match(d)] if recursive else []
    return removed


def remove(path: Path) -> Path:
    """Delete a file, link or whole folder; return its path."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
    return path


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (not Linux): kill's answer stands
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def writable_folder(folder: Path | str, option: str) -> Path:
    """Create `folder` if needed and check that files can be written in it; removes what killed runs left there.

    `option` names the setting that chooses the folder, for the error message."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test."):
            pass
    except OSError as exc:
        raise ErnerfError(f"cannot write to {folder} ({exc.strerror or exc}): choose another folder with "
                          f"{option}=<path>.") from None
    remove_stale_temporaries(folder, recursive=False)
    return folder
