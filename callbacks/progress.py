"""One progress bar for a whole training run: its steps out of `max_steps`, with the rate and the time left.

Lightning's bar starts again at every epoch, and an epoch here is one pass over the subject's frames (a few seconds
on a GPU), so it never says when the run ends.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar


class RunProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar, counting global steps of the run instead of batches of the epoch."""

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
        if self._should_update(step, self.train_progress_bar.total):
            self.train_progress_bar.n = step
            self.train_progress_bar.refresh()
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))
