"""Temporaries of atomic writes: a killed writer's are removed later, a live writer's never."""

from __future__ import annotations

import os
from pathlib import Path

from ernerf.io.atomic import pid_alive, remove_stale_temporaries, tmp_path_for
from tests.reliability import dead_pid


def test_pid_alive_tells_running_from_ended_processes() -> None:
    assert pid_alive(os.getpid())
    assert not pid_alive(dead_pid())


def test_a_dead_writers_temporaries_go_a_live_writers_stay(tmp_path: Path) -> None:
    dead = dead_pid()
    (tmp_path / "gt_imgs").mkdir()
    stale_file = tmp_path / f".tmp.{dead}.mesh.npy"
    stale_dir = tmp_path / f".tmp.{dead}.gt_imgs"
    nested = tmp_path / "gt_imgs" / f".tmp.{dead}.3.jpg"
    in_logs = tmp_path / ".logs" / f".tmp.{dead}.x"  # Hydra's logs are not ours to clean
    for path in (stale_file, nested, stale_dir / "0.jpg", in_logs):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    live = tmp_path_for(tmp_path / "audio.wav")  # this process's name: a writer at work
    live.write_bytes(b"in progress")
    keep = tmp_path / "gt_imgs" / "3.jpg"
    keep.write_bytes(b"done")
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(removed) == sorted([stale_file, stale_dir, nested])
    assert not stale_file.exists() and not stale_dir.exists() and not nested.exists()
    assert live.exists() and keep.exists() and in_logs.exists()
