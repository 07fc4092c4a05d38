"""Atomic writes: a killed run leaves either the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ernerf.errors import ErnerfError


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


def remove_stale_temporaries(folder: Path | str) -> list[Path]:
    """Delete the `.tmp.<pid>.*` files and folders that killed processes left in `folder`; returns them.

    A temporary whose process still runs is another run's work in progress and stays."""
    stale = []
    for path in Path(folder).glob(".tmp.*"):
        pid = path.name.split(".")[2]
        if pid.isdigit() and not _process_alive(int(pid)):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
            stale.append(path)
    return stale


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


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
    remove_stale_temporaries(folder)
    return folder
