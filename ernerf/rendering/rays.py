"""Camera rays in the model's (ngp) space, and ER-NeRF's conversion of NeRF poses into it."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ernerf.errors import ErnerfError


def pixel_directions(
    intrinsics: Sequence[float] | Tensor, H: int, W: int, index: Tensor | None, like: Tensor
) -> Tensor:  # [N, 3] or [B, N, 3] in the dtype and device of `like`
    """Unit camera-space directions through pixel centres (camera looks down +z, y down)."""
    fx, fy, cx, cy = (float(v) for v in intrinsics)
    if index is None:
        index = torch.arange(H * W, device=like.device)
    i = (index % W).to(like.dtype) + 0.5  # column
    j = torch.div(index, W, rounding_mode="floor").to(like.dtype) + 0.5  # row
    dirs = torch.stack([(i - cx) / fx, (j - cy) / fy, torch.ones_like(i)], dim=-1)
    return dirs / dirs.norm(dim=-1, keepdim=True)


def get_rays(
    c2w: Tensor,  # [B, 4, 4] camera-to-world in ngp space (see nerf_matrix_to_ngp)
    intrinsics: Sequence[float] | Tensor,  # (fx, fy, cx, cy) in pixels
    H: int,
    W: int,
    index: Tensor | None = None,  # [B, N] flat pixel ids (row * W + col); None = every pixel
) -> tuple[Tensor, Tensor]:  # rays_o [B, N, 3], rays_d [B, N, 3] (unit length)
    """World-space origins and unit directions of rays through pixel centres."""
    if c2w.ndim != 3 or c2w.shape[-2:] != (4, 4):
        raise ErnerfError(f"get_rays expects camera poses [B, 4, 4], got {tuple(c2w.shape)}")
    if len(intrinsics) != 4:
        raise ErnerfError(f"intrinsics must be (fx, fy, cx, cy), got {len(intrinsics)} values")
    dirs = pixel_directions(intrinsics, H, W, index, c2w)  # [N, 3] or [B, N, 3]
    dirs = dirs.expand(c2w.shape[0], -1, -1)
    rays_d = dirs @ c2w[:, :3, :3].transpose(1, 2)
    rays_o = c2w[:, None, :3, 3].expand_as(rays_d)
    return rays_o, rays_d


def _like(array, values: Sequence[float]):
    """`values` as an array of the same library, dtype (and device) as `array`."""
    if isinstance(array, Tensor):
        return torch.tensor(values, dtype=array.dtype, device=array.device)
    return np.asarray(values, dtype=array.dtype)


def nerf_matrix_to_ngp(pose, scale: float = 4.0, offset: Sequence[float] = (0.0, 0.0, 0.0)):
    """ER-NeRF's remap of an OpenGL c2w ([..., 4, 4], numpy or torch) into the model's space.

    World axes are cycled (x, y, z) -> (y, z, x), the camera's y and z axes are flipped (so cameras
    look down +z with y down, as get_rays assumes), and positions are scaled then offset.
    """
    lib = torch if isinstance(pose, Tensor) else np
    rows = pose[..., [1, 2, 0], :]
    rot = rows[..., :3] * _like(rows, [1.0, -1.0, -1.0])
    trans = rows[..., 3:] * scale + _like(rows, offset)[:, None]
    bottom = lib.zeros_like(pose[..., 3:, :])
    bottom[..., 0, 3] = 1.0
    return lib.concatenate([lib.concatenate([rot, trans], -1), bottom], -2)
