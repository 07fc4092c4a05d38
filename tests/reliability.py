"""Helpers for tests that a failed or refused run leaves a folder as it was and says why in one line."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

IGNORED_FILES = (".lock",)  # a refused run opens the lock file to ask for it
IGNORED_DIRS = (".logs", ".hydra")  # Hydra writes every run's log there, a refused one's too


def tree_digest(folder: Path | str) -> dict[str, str]:
    """{path relative to `folder`: sha1 of its bytes} for every file below it, lock files and log folders aside."""
    folder = Path(folder)
    digest = {}
    for top, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if d not in IGNORED_DIRS]
        for name in files:
            if name not in IGNORED_FILES:
                path = Path(top) / name
                digest[path.relative_to(folder).as_posix()] = hashlib.sha1(path.read_bytes()).hexdigest()
    return digest


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped): the writer of a killed run's leftovers."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def run_entry_point(repo: Path, script: str, *overrides: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python <script> <overrides>` from the repository root, as a user would."""
    return subprocess.run([sys.executable, script, *overrides], cwd=repo, capture_output=True, text=True,
                          timeout=timeout)


def assert_user_error(proc: subprocess.CompletedProcess, *phrases: str) -> str:
    """The run ended as a user error: exit status 2, `error: ...` in at most 3 lines of stderr, no traceback."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, f"exit {proc.returncode}; stderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr and len(lines) <= 3, proc.stderr
    message = next((line for line in lines if line.startswith("error: ")), None)
    assert message is not None, proc.stderr
    for phrase in phrases:
        assert phrase in message, f"{phrase!r} not in {message!r}"
    return message
