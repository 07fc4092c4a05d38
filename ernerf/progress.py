"""Progress for long work (preprocessing steps, evaluation renders, inference): one look, with rate and time left.

On a terminal it is a tqdm bar; where output is captured (a job's log file, a cluster's stdout) a bar's redraws would
be one endless line, so there it is a log line now and then instead."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import Literal

from tqdm import tqdm

log = logging.getLogger(__name__)

Enabled = bool | Literal["auto"] | None
# Seconds between redraws: a bar drawn on every update would cost more than quick work itself.
REDRAW_SECONDS = 0.1
# Seconds between the lines of progress written where output is not a terminal.
LOG_SECONDS = 30.0
BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} {unit}s [{elapsed}<{remaining}, {rate_fmt}]"


def progress_bar(total: int | None, desc: str, unit: str = "frame", enabled: Enabled = "auto") -> tqdm | LoggedProgress:
    """Progress with its rate and ETA, used as a context manager and `update(n)`-ed. `enabled="auto"` (or None): a bar
    on a terminal, else a log line every LOG_SECONDS; True: a bar wherever stderr goes; False: nothing."""
    if enabled in ("auto", None) and not sys.stderr.isatty():
        return LoggedProgress(total, desc, unit)
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True, leave=False,
                mininterval=REDRAW_SECONDS, smoothing=0.1, bar_format=BAR_FORMAT)


class LoggedProgress:
    """Progress as log lines: `desc: n/total units, rate, time left` once every `every` seconds (none for work that
    ends sooner), and one line with the total time at the end of work that wrote any. `initial`: units done before
    (a resumed run), counted in `n` but not in the rate."""

    def __init__(self, total: int | None, desc: str, unit: str = "frame", every: float = LOG_SECONDS,
                 clock: Callable[[], float] = time.monotonic, initial: int = 0) -> None:
        self.total, self.desc, self.unit, self.every, self.clock = total, desc, unit, every, clock
        self.n = self.initial = initial
        self.lines = 0
        self.start = self.last = clock()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.due():
            self.write()

    def due(self) -> bool:
        """Whether a line is due (the caller may then gather more to say in it)."""
        return self.clock() - self.last >= self.every

    def write(self, detail: str = "") -> None:
        """Log the status now, with `detail` after it."""
        self.last = self.clock()
        self.lines += 1
        log.info("%s%s", self.status(self.last), f", {detail}" if detail else "")

    def status(self, now: float) -> str:
        """`desc: 52/132 frames, 5.4 frames/s, 15 s left` (no total and no time left where the total is not known)."""
        rate = (self.n - self.initial) / max(now - self.start, 1e-9)
        if self.total is None:
            return f"{self.desc}: {self.n} {self.unit}s, {rate:.1f} {self.unit}s/s"
        left = f", {(self.total - self.n) / rate:.0f} s left" if rate > 0 else ""
        return f"{self.desc}: {self.n}/{self.total} {self.unit}s, {rate:.1f} {self.unit}s/s{left}"

    def close(self) -> None:
        if self.lines:
            done, seconds = self.n - self.initial, self.clock() - self.start
            log.info("%s: %d %ss in %.0f s (%.1f %ss/s)", self.desc, done, self.unit, seconds, done / max(seconds, 1e-9),
                     self.unit)

    def __enter__(self) -> LoggedProgress:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
