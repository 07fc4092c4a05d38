"""Spatial encoders built from hash grids: ER-NeRF's tri-plane and RAD-NeRF's single 3D grid."""

from __future__ import annotations

import math

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
        # Per-level weights of a coarse-to-fine schedule (`open_levels`); unused until one is set, and never saved:
        # a trained encoder has every level open.
        self.register_buffer("level_weights", torch.ones(self.xy.num_levels), persistent=False)
        self.windowed = False

    @property
    def num_levels(self) -> int:
        return self.xy.num_levels

    def open_levels(self, levels: float) -> None:
        """Weight the levels coarse to fine: the first `floor(levels)` whole, the next by a cosine ease of the
        fraction, the rest zero (no output, no gradient). The weights are written in place, so a captured CUDA graph
        reads the new ones; once called, every forward applies them."""
        ramp = (levels - torch.arange(self.num_levels, dtype=torch.float64)).clamp(0.0, 1.0)
        eased = 0.5 * (1.0 - torch.cos(math.pi * ramp))
        self.level_weights.copy_(eased.to(self.level_weights.dtype), non_blocking=True)
        self.windowed = True

    def forward(self, x: Tensor) -> Tensor:  # [N, 3] -> [N, 3 * L * F]
        """Encode points by projecting them onto the three axis-aligned planes."""
        _check_points(x)
        if self.xy.uses_triton(x):
            features = self._triton_fused(x)
        else:
            features = torch.cat([self.xy(x[:, :2]), self.yz(x[:, 1:]), self.xz(x[:, 0::2])], dim=-1)
        if not self.windowed:
            return features
        weights = self.level_weights[:, None].to(features.dtype)  # [L, 1] over [N, planes, L, F]
        return (features.reshape(x.shape[0], 3, self.num_levels, -1) * weights).reshape(x.shape[0], -1)

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
