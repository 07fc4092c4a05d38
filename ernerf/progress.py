"""Progress bars for long work (preprocessing steps, evaluation renders): one look, with rate and time left."""

from __future__ import annotations

from typing import Literal

from tqdm import tqdm

Enabled = bool | Literal["auto"] | None
# Seconds between redraws: a bar drawn on every update would cost more than quick work itself.
REDRAW_SECONDS = 0.1


def progress_bar(total: int | None, desc: str, unit: str = "frame", enabled: Enabled = "auto") -> tqdm:
    """A bar on stderr with its rate and ETA; `enabled="auto"` (or None) shows it only on a terminal, so logs and
    captured output get the log lines alone. Use it as a context manager and `update(n)` it."""
    disable = None if enabled in ("auto", None) else not enabled
    return tqdm(total=total, desc=desc, unit=unit, disable=disable, dynamic_ncols=True, leave=False,
                mininterval=REDRAW_SECONDS, smoothing=0.1, bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} {unit}s "
                                          "[{elapsed}<{remaining}, {rate_fmt}]")
