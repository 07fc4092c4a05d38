"""Progress of long work: a bar on a terminal, a log line now and then in captured output, nothing when off."""

from __future__ import annotations

import io
import logging

import pytest
from tqdm import tqdm

from ernerf.progress import LoggedProgress, progress_bar


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_captured_output_gets_a_line_every_interval_with_rate_and_time_left(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    caplog.set_level(logging.INFO, logger="ernerf.progress")
    with LoggedProgress(132, "rendering", every=30.0, clock=clock) as bar:
        for _ in range(132):
            clock.now += 0.5  # 2 frames/s
            bar.update()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "rendering: 60/132 frames, 2.0 frames/s, 36 s left"
    assert lines[1] == "rendering: 120/132 frames, 2.0 frames/s, 6 s left"
    assert lines[-1] == "rendering: 132 frames in 66 s (2.0 frames/s)" and len(lines) == 3


def test_quick_work_writes_no_line_and_an_unknown_total_has_no_time_left(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    caplog.set_level(logging.INFO, logger="ernerf.progress")
    with LoggedProgress(10, "quick", clock=clock) as bar:
        bar.update(10)
    assert not caplog.records
    open_ended = LoggedProgress(None, "preloading", unit="image", every=1.0, clock=clock)
    clock.now += 2.0
    open_ended.update(8)
    assert caplog.records[-1].getMessage() == "preloading: 8 images, 4.0 images/s"


def test_auto_picks_by_terminal_and_true_or_false_force_the_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert isinstance(progress_bar(5, "x"), LoggedProgress)
    assert isinstance(progress_bar(5, "x", enabled=None), LoggedProgress)
    assert not progress_bar(5, "x", enabled=True).disable and progress_bar(5, "x", enabled=False).disable
    monkeypatch.setattr("sys.stderr", Terminal())
    bar = progress_bar(5, "x")
    assert isinstance(bar, tqdm) and not bar.disable
