"""callbacks/train_clock.py: the training seconds at a schedule of steps, validation and checkpoint saves left out."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.demos.boring_classes import BoringModel

from callbacks.train_clock import TrainClock

PAUSE = 0.4


class SlowStep(BoringModel):
    def training_step(self, batch, batch_idx):
        time.sleep(0.02)
        return super().training_step(batch, batch_idx)


class SlowBetweenSteps(L.Callback):
    """A long validation, and a long save after every second step (as ModelCheckpoint's, which runs last)."""

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        time.sleep(PAUSE)

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step % 2 == 0:
            time.sleep(PAUSE)


def test_clock_counts_steps_not_validation_or_saves(tmp_path: Path) -> None:
    clock = TrainClock(str(tmp_path / "clock.csv"), every_n_steps=2)
    trainer = L.Trainer(max_steps=5, val_check_interval=3, limit_val_batches=1, callbacks=[clock, SlowBetweenSteps()],
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, accelerator="cpu")
    start = time.perf_counter()
    trainer.fit(SlowStep())
    wall = time.perf_counter() - start
    with (tmp_path / "clock.csv").open() as f:
        rows = [(int(r["step"]), float(r["train_s"])) for r in csv.DictReader(f)]
    assert [step for step, _ in rows] == [2, 4, 5]  # every 2 steps and the last
    seconds = [s for _, s in rows]
    assert seconds == sorted(seconds) and seconds[0] >= 2 * 0.02
    assert wall > 3 * PAUSE  # one validation and two saves happened ...
    assert seconds[-1] < 5 * 0.02 + PAUSE  # ... and none of them is on the clock
