"""Refresh the occupancy grid every N steps from conditioning seen in training."""

from __future__ import annotations

import random
from typing import Any

import lightning as L


class OccupancyGridCallback(L.Callback):
    """Every `every_n_steps` optimizer steps, update the grid with the audio code and eye of a random training frame."""

    def __init__(self, every_n_steps: int = 16, seed: int = 0) -> None:
        self.every_n_steps = every_n_steps
        self.rng = random.Random(seed)
        self.updates = 0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if pl_module.grid is None or trainer.global_step % self.every_n_steps != 0:
            return
        data = trainer.datamodule.data
        frame = self.rng.randrange(data.num_train)  # ER-NeRF: one random frame's audio per refresh
        device = pl_module.device
        pl_module.refresh_occupancy(data.audio_window(frame).to(device), data.eye[frame : frame + 1].to(device))
        self.updates += 1
        pl_module.log("train/occupancy", pl_module.grid.occupancy_ratio)  # 0 means nothing renders any more

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates, "rng": self.rng.getstate()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.updates = state_dict["updates"]
        self.rng.setstate(state_dict["rng"])
