"""OccupancyGridCallback: when it refreshes, and how many cells each refresh samples (ER-NeRF's rule)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from callbacks.occupancy import OccupancyGridCallback
from ernerf.errors import ErnerfError
from ernerf.rendering import OccupancyGrid


class RecordingSystem(SimpleNamespace):
    def refresh_occupancy(self, audio: torch.Tensor, eye: torch.Tensor, cells: int | None = None) -> None:
        self.calls.append(cells)

    def log(self, *args, **kwargs) -> None:
        pass


def test_the_first_updates_sample_every_cell_and_later_ones_a_fraction() -> None:
    grid = OccupancyGrid((-1, -1, -1, 1, 1, 1), resolution=8)
    system = RecordingSystem(grid=grid, device=torch.device("cpu"), calls=[])
    datamodule = SimpleNamespace(num_train_frames=5, conditioning=lambda frame: (torch.zeros(8, 16, 4), torch.zeros(1)))
    callback = OccupancyGridCallback(every_n_steps=4, full_updates=2, sampled_fraction=0.5)
    for step in range(20):
        callback.on_train_batch_start(SimpleNamespace(global_step=step, datamodule=datamodule), system, None, step)
    assert system.calls == [None, None, 256, 256, 256]  # steps 0 and 4 whole, then half of the 8^3 cells
    every = OccupancyGridCallback(full_updates=0, sampled_fraction=1.0)
    assert every.cells(grid) is None
    with pytest.raises(ErnerfError, match="sampled_fraction"):
        OccupancyGridCallback(sampled_fraction=0.0)
