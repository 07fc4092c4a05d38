"""The seconds a run has spent training, at a schedule of steps: what a benchmark compares at equal wall time.

The clock starts when training starts (data set up, model built: excluded) and counts everything a step does, its
compilation and CUDA graph captures included. It stops from the end of a recorded step until the next step starts
(the checkpoint saved at that step) and during validation. The GPU's queue is drained before each reading, so the
time is the work done, not the work queued.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
import torch


class TrainClock(L.Callback):
    """Rows `step,train_s` in `path` every `every_n_steps` steps and at the last step (rank 0; a resumed run's clock
    starts again)."""

    def __init__(self, path: str, every_n_steps: int) -> None:
        self.path, self.every_n_steps = Path(path), max(int(every_n_steps), 1)
        self.t0 = self.paused = 0.0
        self.pause_from: float | None = None
        self.running = False  # inside fit's training (validation may also run outside it)

    def now(self, pl_module: L.LightningModule) -> float:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        return time.perf_counter()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.t0, self.paused, self.pause_from, self.running = self.now(pl_module), 0.0, None, True
        if trainer.is_global_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("step,train_s\n")

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self.pause_from is not None:
            self.paused += time.perf_counter() - self.pause_from
            self.pause_from = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if step % self.every_n_steps == 0 or step == trainer.max_steps:
            self.pause_from = self.now(pl_module)
            if trainer.is_global_zero:
                with self.path.open("a") as f:
                    f.write(f"{step},{self.pause_from - self.t0 - self.paused:.3f}\n")

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.running and self.pause_from is None:
            self.pause_from = self.now(pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.running = False
