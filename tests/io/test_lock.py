"""The folder lock: a second holder is refused with a one-line error; a dead holder leaves no stale lock."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ernerf.errors import ErnerfError
from ernerf.io.lock import exclusive_lock


def test_second_holder_is_refused(tmp_path: Path) -> None:
    with exclusive_lock(tmp_path, "subject demo"):
        holder = subprocess.run([sys.executable, "-c", (
            "from ernerf.io.lock import exclusive_lock\n"
            f"with exclusive_lock({str(tmp_path)!r}, 'subject demo'):\n    print('got it')")],
            capture_output=True, text=True)
    assert holder.returncode != 0 and "got it" not in holder.stdout
    assert "subject demo is in use by another run (pid" in holder.stderr


def test_lock_is_released_by_a_killed_holder(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", (
        "import time\nfrom ernerf.io.lock import exclusive_lock\n"
        f"with exclusive_lock({str(tmp_path)!r}, 'x'):\n    print('held', flush=True)\n    time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    with pytest.raises(ErnerfError, match="in use"), exclusive_lock(tmp_path, "x"):
        pass
    child.kill()
    child.wait()
    with exclusive_lock(tmp_path, "x"):  # the kill released it
        assert (tmp_path / ".lock").exists()
