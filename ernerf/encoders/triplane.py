"""Spatial encoders built from hash grids: ER-NeRF's tri-plane and RAD-NeRF's single 3D grid."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ernerf.encoders.hashgrid import HashGridEncoder
from ernerf.errors import ErnerfError


def _check_points(x: Tensor) -> None:
    """Raise if x is not [N, 3]."""
    if x.ndim != 2 or x.shape[-1] != 3:
        raise ErnerfError(f"spatial encoders expect points of shape [N, 3], got {tuple(x.shape)}")


class TriPlaneEncoder(nn.Module):
    """Three 2D hash grids on the xy, yz and xz planes, features concatenated (ER-NeRF)."""

    def __init__(self, **grid_kwargs) -> None:
        super().__init__()
        self.xy = HashGridEncoder(input_dim=2, **grid_kwargs)
        self.yz = HashGridEncoder(input_dim=2, **grid_kwargs)
        self.xz = HashGridEncoder(input_dim=2, **grid_kwargs)
        self.output_dim = 3 * self.xy.output_dim

    def forward(self, x: Tensor) -> Tensor:  # [N, 3] -> [N, 3 * L * F]
        """Encode points by projecting them onto the three axis-aligned planes."""
        _check_points(x)
        if self.xy.uses_triton(x):
            return self._triton_fused(x)
        return torch.cat([self.xy(x[:, :2]), self.yz(x[:, 1:]), self.xz(x[:, 0::2])], dim=-1)

    def _triton_fused(self, x: Tensor) -> Tensor:  # [N, 3] -> [N, 3 * L * F]
        """All three planes in one Triton launch (same layout as three separate grids)."""
        from ernerf.encoders.triton_hashgrid import triplane_triton

        grids = (self.xy.embeddings, self.yz.embeddings, self.xz.embeddings)
        return triplane_triton(x, grids, self.xy.offsets, self.xy.resolutions, self.xy.log2_hashmap_size, self.xy.bound)


class GridEncoder3D(nn.Module):
    """One 3D hash grid (RAD-NeRF's backbone), same interface as TriPlaneEncoder."""

    def __init__(self, **grid_kwargs) -> None:
        super().__init__()
        self.grid = HashGridEncoder(input_dim=3, **grid_kwargs)
        self.output_dim = self.grid.output_dim

    def forward(self, x: Tensor) -> Tensor:  # [N, 3] -> [N, L * F]
        """Encode 3D points."""
        _check_points(x)
        return self.grid(x)
