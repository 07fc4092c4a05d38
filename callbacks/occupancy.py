"""Refresh the occupancy grid every N steps from conditioning seen in training; identical on every rank."""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from torch import nn


def broadcast_buffers(module: nn.Module, src: int = 0) -> None:
    """Overwrite every buffer of `module` with rank `src`'s copy (in place; a no-op outside torch.distributed)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer.view(torch.uint8) if buffer.dtype == torch.bool else buffer, src=src)


class OccupancyGridCallback(L.Callback):
    """Every `every_n_steps` optimizer steps, update the grid with the audio code and eye of a random training frame
    (the data module's `conditioning`).

    Under DDP every rank refreshes (ranks draw different jitter points), then rank 0's grid is broadcast, so all
    ranks march through the same cells; the system's DDP strategy therefore need not broadcast buffers each step.
    """

    def __init__(self, every_n_steps: int = 16, seed: int = 0) -> None:
        self.every_n_steps = every_n_steps
        self.rng = random.Random(seed)
        self.updates = 0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if pl_module.grid is None or trainer.global_step % self.every_n_steps != 0:
            return
        datamodule = trainer.datamodule
        frame = self.rng.randrange(datamodule.num_train_frames)  # ER-NeRF: one random frame's audio per refresh
        audio, eye = datamodule.conditioning(frame)  # preloaded frames: already on the device, no copy
        pl_module.refresh_occupancy(audio.to(pl_module.device), eye.to(pl_module.device))
        broadcast_buffers(pl_module.grid)
        self.updates += 1
        pl_module.log("train/occupancy", pl_module.grid.occupied_fraction())  # 0: nothing renders any more

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates, "rng": self.rng.getstate()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.updates = state_dict["updates"]
        self.rng.setstate(state_dict["rng"])
