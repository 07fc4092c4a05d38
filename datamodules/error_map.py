"""Error maps: where each training frame's rays missed, on a coarse grid of cells, to draw the next rays from.

Instant-NGP's error-map training, written for this data module: each frame keeps a `cells` x `cells` map of the
photometric error its rays met, an exponential moving average per cell. Part of each batch is drawn from the map by
inverse CDF (cell by its share of the error, pixel uniform within the cell), the rest uniformly over the image, so
every pixel keeps being seen. Everything stays on the frames' device and syncs nothing with the host, so a CUDA
graph can draw from the map inside the captured step while the update runs beside it (docs/evaluation.md,
"Error-guided ray sampling").
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from ernerf.errors import ErnerfError


class ErrorMap:
    """Per-frame maps of the rays' squared error on a `cells` x `cells` grid; draws ray pixels in proportion to it.

    uniform_fraction: the share of each draw spread uniformly over the image (the rest follows the map).
    rate: how far one step's mean error of a cell moves that cell of its frame (an EMA: new = old + rate (obs - old)).
    shared_rate: the same for the map of all frames together, which stands in for a frame's cells not observed yet:
        the frames of one subject look alike, and a CPU run visits each frame only a few times.
    reweight: give each drawn ray the loss weight 1 / (its probability x H x W) (`loss_weights`), so the loss's
        expectation stays that of uniform rays (importance sampling); False: the loss leans toward the error, as in
        Instant-NGP.
    """

    def __init__(self, cells: int = 32, uniform_fraction: float = 0.5, rate: float = 0.5, shared_rate: float = 0.05,
                 reweight: bool = False) -> None:
        if cells < 1 or not 0.0 <= uniform_fraction <= 1.0 or not 0.0 < rate <= 1.0 or not 0.0 < shared_rate <= 1.0:
            raise ErnerfError(f"error map: cells must be >= 1, uniform_fraction in [0, 1], rate and shared_rate in "
                              f"(0, 1]; got {cells}, {uniform_fraction}, {rate}, {shared_rate}.")
        self.cells, self.uniform_fraction, self.rate, self.shared_rate = cells, uniform_fraction, rate, shared_rate
        self.reweight = reweight
        self.frames: Tensor | None = None  # [F, cells * cells]: NaN where the frame has not observed the cell yet
        self.shared: Tensor | None = None  # [cells * cells]: every frame's observations; uniform to start with

    def fit(self, rects: Mapping[str, Tensor]) -> None:
        """Allocate one map per frame, on the device of the subject's regions `rects` (name -> [F, 4])."""
        some = next(iter(rects.values()))
        size = self.cells * self.cells
        self.frames = torch.full((some.shape[0], size), float("nan"), device=some.device)
        self.shared = torch.ones(size, device=some.device)
        if some.device.type == "cpu":
            # Loader processes draw the rays while this process observes the errors: they must see one memory.
            self.frames.share_memory_()
            self.shared.share_memory_()

    def weights(self, frame: Tensor) -> Tensor:
        """The sampling weights of frame index `frame` ([1] long): its own cells where observed, else the shared map."""
        own = self._fitted().index_select(0, frame)[0]
        return torch.where(own.isnan(), self.shared, own)

    def draw(self, count: int, height: int, width: int, frame: Tensor, generator: torch.Generator | None = None,
             device: torch.device | str | None = None) -> Tensor:
        """`count` flat pixel ids [count] of an H x W frame: the uniform share first, then those drawn from the map."""
        cells = self._check_size(height, width)
        guided = count - round(count * self.uniform_fraction)
        uniform = torch.randint(0, height * width, (count - guided,), generator=generator, device=device)
        cdf = torch.cumsum(self.weights(frame).float(), 0)
        cdf = cdf / cdf[-1].clamp_min(1e-20)
        picks = torch.rand(guided, generator=generator, device=device)
        cell = torch.searchsorted(cdf, picks, right=True).clamp_(max=cells * cells - 1)
        rows = within_cells(cell // cells, cells, height, torch.rand(guided, generator=generator, device=device))
        cols = within_cells(cell % cells, cells, width, torch.rand(guided, generator=generator, device=device))
        return torch.cat([uniform, rows * width + cols])

    def loss_weights(self, index: Tensor, height: int, width: int, frame: Tensor) -> Tensor:
        """1 / (probability x H x W) of drawing pixels `index` [N] of frame `frame` (the uniform share and the map's
        together): [N], 1 on average over a draw, at most 1 / uniform_fraction."""
        cells = self._check_size(height, width)
        weights = self.weights(frame).float()
        share = weights / weights.sum().clamp_min(1e-20)  # [cells^2] each cell's share of the guided rays
        cell = cell_numbers(index, cells, height, width)
        pixels = cell_extent(cell // cells, cells, height) * cell_extent(cell % cells, cells, width)  # in each ray's cell
        density = self.uniform_fraction + (1 - self.uniform_fraction) * share[cell] * (height * width) / pixels
        return 1 / density

    def observe(self, frame: Tensor, index: Tensor, error: Tensor, height: int, width: int) -> None:
        """Move frame `frame`'s cells (and the shared map's) toward the mean `error` [N] of the pixels `index` [N]
        that fell in them; cells no pixel fell in keep their value. In place, without a host sync."""
        maps, cells = self._fitted(), self._check_size(height, width)
        cell = cell_numbers(index, cells, height, width)
        sums = torch.zeros(cells * cells, device=maps.device).index_add_(0, cell, error.float())
        counts = torch.zeros(cells * cells, device=maps.device).index_add_(0, cell, torch.ones_like(error, dtype=torch.float32))
        seen, mean = counts > 0, sums / counts.clamp_min(1)
        own = maps.index_select(0, frame)[0]
        moved = torch.where(own.isnan(), mean, own + self.rate * (mean - own))
        maps.index_copy_(0, frame, torch.where(seen, moved, own)[None])
        self.shared.copy_(torch.where(seen, self.shared + self.shared_rate * (mean - self.shared), self.shared))

    def state_dict(self) -> dict[str, Tensor]:
        """The maps learnt so far, on the CPU (a checkpoint keeps them, so a resumed run draws where it left off)."""
        return {"frames": self._fitted().cpu(), "shared": self.shared.cpu()}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Copy saved maps into the fitted ones, in place: loader processes and a captured step read these tensors."""
        frames = self._fitted()
        if tuple(state["frames"].shape) != tuple(frames.shape):
            raise ErnerfError(f"the checkpoint's error map has {tuple(state['frames'].shape)} (frames, cells), this "
                              f"subject's {tuple(frames.shape)}: resume on the subject and error_map.cells it was "
                              "trained with, or start a new run.")
        frames.copy_(state["frames"])
        self.shared.copy_(state["shared"])

    def _fitted(self) -> Tensor:
        if self.frames is None:
            raise ErnerfError("the error map must be fitted to the subject first (the data module does, in setup).")
        return self.frames

    def _check_size(self, height: int, width: int) -> int:
        if self.cells > min(height, width):
            raise ErnerfError(f"error map of {self.cells} cells a side on a {height}x{width} frame: some cells would "
                              "hold no pixel; set datamodule.sampler.error_map.cells to at most the frame's side.")
        return self.cells


def cell_numbers(index: Tensor, cells: int, height: int, width: int) -> Tensor:
    """The cell of flat pixel ids [N] of an H x W frame on a `cells` x `cells` grid, row-major: [N]."""
    return (index // width * cells // height) * cells + index % width * cells // width


def cell_bounds(cell: Tensor, cells: int, size: int) -> tuple[Tensor, Tensor]:
    """First pixel and one past the last along one axis of `size` pixels of cell numbers `cell` of `cells` (the split
    of `cell_numbers`: the pixels p with p * cells // size == cell)."""
    return (cell * size + cells - 1) // cells, ((cell + 1) * size + cells - 1) // cells


def cell_extent(cell: Tensor, cells: int, size: int) -> Tensor:
    """Pixels along one axis of `size` pixels in cell numbers `cell` of `cells`."""
    start, end = cell_bounds(cell, cells, size)
    return end - start


def within_cells(cell: Tensor, cells: int, size: int, unit: Tensor) -> Tensor:
    """Pixel coordinates along one axis of `size` pixels: uniform (`unit` in [0, 1)) inside cell numbers `cell` of
    `cells` equal cells."""
    start, end = cell_bounds(cell, cells, size)
    offset = (unit * (end - start)).long()
    return start + torch.minimum(offset, end - start - 1)  # float rounding must not reach the next cell
