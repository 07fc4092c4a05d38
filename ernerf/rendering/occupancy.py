"""Dense occupancy grid over the scene box: which cells can hold density, refreshed with an EMA."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ernerf.encoders.hashgrid import triton_available


class OccupancyGrid(nn.Module):
    """Density EMA per cell of a resolution^3 grid over `aabb`; cells above the threshold are occupied."""

    def __init__(
        self,
        aabb: Sequence[float] | Tensor,  # [6] (x_min, y_min, z_min, x_max, y_max, z_max)
        resolution: int = 128,
        decay: float = 0.95,
        threshold: float = 0.01,
    ) -> None:
        super().__init__()
        self.resolution, self.decay, self.threshold = resolution, decay, threshold
        self.register_buffer("aabb", torch.as_tensor(aabb, dtype=torch.float32).clone())
        self.register_buffer("density", torch.zeros(resolution**3))  # [R^3] EMA of density, x-major
        self.register_buffer("occupancy", torch.ones(resolution**3, dtype=torch.bool))  # [R^3]
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    @property
    def occupancy_ratio(self) -> float:
        """Fraction of occupied cells."""
        return float(self.occupied_fraction())

    def occupied_fraction(self) -> Tensor:
        """Fraction of occupied cells as a [] tensor on the grid's device (read without a host sync)."""
        return self.occupancy.float().mean()

    def cell_index(self, x: Tensor) -> tuple[Tensor, Tensor]:  # [M, 3] -> flat id [M], inside [M]
        """Flat cell id of each point (clamped) and whether the point lies inside the box."""
        lo, hi = self.aabb[:3], self.aabb[3:]
        inside = ((x >= lo) & (x <= hi)).all(-1)
        ijk = ((x - lo) / (hi - lo) * self.resolution).floor().long().clamp(0, self.resolution - 1)
        return (ijk[:, 0] * self.resolution + ijk[:, 1]) * self.resolution + ijk[:, 2], inside

    def occupied(self, x: Tensor) -> Tensor:  # [M, 3] -> bool [M]
        """Whether points fall in occupied cells (points outside the box never are)."""
        cells, inside = self.cell_index(x)
        return inside & self.occupancy[cells]

    def occupied_samples(self, rays_o: Tensor, rays_d: Tensor, t: Tensor, hit: Tensor) -> Tensor:
        """bool [N, S]: samples rays_o + t * rays_d of rays that `hit` the box that fall in occupied cells.

        On CUDA one Triton kernel (ernerf/rendering/triton_march.py) instead of [N, S, 3] temporaries."""
        if rays_o.is_cuda and triton_available():
            from ernerf.rendering.triton_march import occupied_samples_triton

            return occupied_samples_triton(rays_o, rays_d, t, hit, self.aabb, self.occupancy, self.resolution)
        x = rays_o[:, None] + t[..., None] * rays_d[:, None]  # [N, S, 3]
        return hit[:, None] & self.occupied(x.reshape(-1, 3)).view_as(t)

    @torch.no_grad()
    def update(self, density_fn: Callable[[Tensor], Tensor], chunk: int = 2**18) -> None:
        """Sample density at a random point of every cell; keep max(decayed EMA, new) and re-threshold."""
        fresh = torch.cat([density_fn(self._jittered_points(ids)).float() for ids in self._cell_chunks(chunk)])
        self.density.copy_(torch.maximum(self.density * self.decay, fresh.reshape(-1)))
        # torch-ngp's rule: the threshold never exceeds the mean density, so sparse scenes keep their cells.
        # (A device tensor: a training step on the GPU must not wait for this.)
        threshold = self.density.clamp_min(0).mean().clamp(max=self.threshold)
        self.occupancy.copy_(self.density > threshold)
        self.num_updates += 1

    def _cell_chunks(self, chunk: int) -> list[Tensor]:
        """Flat cell ids split into chunks."""
        return list(torch.arange(self.resolution**3, device=self.aabb.device).split(chunk))

    def _jittered_points(self, ids: Tensor) -> Tensor:  # [K] -> [K, 3]
        """A uniformly random point inside each given cell."""
        r = self.resolution
        ijk = torch.stack([ids // (r * r), (ids // r) % r, ids % r], -1)  # [K, 3], x-major like cell_index
        lo, hi = self.aabb[:3], self.aabb[3:]
        return lo + (ijk + torch.rand(ijk.shape, device=ids.device)) / r * (hi - lo)
