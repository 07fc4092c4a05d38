"""One progress bar for a whole training run: its steps out of `max_steps`, with the rate and the time left.

Lightning's bar starts again at every epoch, and an epoch here is one pass over the subject's frames (a few seconds
on a GPU), so it never says when the run ends. Where Lightning's output is not a terminal (a job's log, a cluster's
stdout), a bar's redraws would fill the log: there the run writes a line of progress every 30 s instead.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar

from ernerf.progress import LOG_SECONDS, LoggedProgress


class RunProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar, counting global steps of the run instead of batches of the epoch; with `log_lines` (by
    default where stdout, which Lightning draws on, is not a terminal) log lines of progress and metrics instead."""

    def __init__(self, *args: Any, log_lines: bool | None = None, every: float = LOG_SECONDS,
                 clock: Callable[[], float] = time.monotonic, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.log_lines = not sys.stdout.isatty() if log_lines is None else log_lines
        self.every, self.clock = every, clock
        self.logged: LoggedProgress | None = None
        if self.log_lines:
            self.disable()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if self.log_lines and getattr(trainer, "is_global_zero", True):  # one rank's lines under DDP
            total = trainer.max_steps if trainer.max_steps > 0 else None
            self.logged = LoggedProgress(total, "training", "step", self.every, self.clock, initial=trainer.global_step)

    def on_train_end(self, *args: Any) -> None:
        super().on_train_end(*args)
        if self.logged is not None:
            self.logged.close()

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        bar = self.train_progress_bar
        if trainer.current_epoch == 0 or bar.total != trainer.max_steps:  # the run's start (or its resumption)
            bar.reset(total=trainer.max_steps if trainer.max_steps > 0 else None)
            bar.initial = trainer.global_step
            bar.n = trainer.global_step
        bar.set_description(f"training (epoch {trainer.current_epoch})")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if self.logged is not None:
            self.logged.n = step
            if self.logged.due():  # the metrics only then: reading them waits for the GPU
                metrics = self.get_metrics(trainer, pl_module)
                self.logged.write(", ".join(f"{k}={_short(v)}" for k, v in metrics.items() if k != "v_num"))
        if self._should_update(step, self.train_progress_bar.total):
            self.train_progress_bar.n = step
            self.train_progress_bar.refresh()
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))


def _short(value: Any) -> str:
    """A metric as the bar shows it: four significant digits."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)
