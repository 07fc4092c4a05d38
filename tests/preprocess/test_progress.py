"""Each preprocessing step that works frame by frame shows a progress bar with its rate and the time left."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import REPO, compose, shared_clip
from tests.reliability import run_entry_point

STEPS_RUN = ["ingest", "headbox", "landmarks"]


def test_steps_show_bars_with_rate_and_eta_when_asked(tmp_path: Path) -> None:
    names = list(compose("preprocess", ["subject=s"]).preprocess.steps)
    later = [f"~preprocess.steps.{n}" for n in names if n not in STEPS_RUN]
    clip = shared_clip("edge/odd_fps_22.mp4")  # 22 fps: ingest re-encodes it, the slow path users wait for
    done = run_entry_point(REPO, "preprocess.py", "subject=s", f"video={clip}", f"paths.data_root={tmp_path}",
                           "preprocess.workers=1", "preprocess.progress=true", *later)
    assert done.returncode == 0, done.stderr[-2000:]
    frames = int(re.search(r"'frames': (\d+)", done.stdout).group(1))
    for step in STEPS_RUN:
        bars = [b for b in re.split(r"[\r\n]", done.stderr) if b.startswith(f"{step}:")]
        assert bars, f"no progress bar for {step}: {done.stderr[-1000:]}"
        assert all(f"/{frames} frames [" in b for b in bars), bars  # the step's whole work is the total
        assert any(re.search(r"\[\d\d:\d\d<\d\d:\d\d, +[\d.]+frames?/s\]", b) for b in bars), bars  # time left, rate


def test_bars_stay_off_when_output_is_not_a_terminal(tmp_path: Path) -> None:
    names = list(compose("preprocess", ["subject=s"]).preprocess.steps)
    done = run_entry_point(REPO, "preprocess.py", "subject=s", f"video={shared_clip('train/hdtf_aoc_8s.mp4')}",
                           f"paths.data_root={tmp_path}", *[f"~preprocess.steps.{n}" for n in names[1:]])
    assert done.returncode == 0, done.stderr[-2000:]
    assert "ingest:" not in done.stderr and "step ingest done" in done.stdout
    assert "next: python train.py subject=s stage=all" in done.stdout
