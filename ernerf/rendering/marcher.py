"""Stratified ray marching with occupancy-grid compaction and alpha compositing (pure PyTorch)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ernerf.fields.base import FieldOutputs
from ernerf.rendering.occupancy import OccupancyGrid
from ernerf.rendering.rays import get_rays

FieldFn = Callable[[Tensor, Tensor], FieldOutputs]  # (x [M, 3], d [M, 3]) -> outputs of M samples


@dataclass
class RenderOutputs:
    """Per-ray results of compositing."""

    rgb: Tensor  # [N, 3], background blended in
    depth: Tensor  # [N], expected distance along the unit ray (weights not renormalised)
    opacity: Tensor  # [N], accumulated alpha
    extras: dict[str, Tensor]  # name -> [N, k], composited with the same weights as colour
    samples_evaluated: int  # samples the field was called on (after compaction)


def intersect_aabb(
    rays_o: Tensor, rays_d: Tensor, aabb: Tensor, min_near: float
) -> tuple[Tensor, Tensor, Tensor]:  # [N, 3] x2, [6] -> near [N], far [N], hit [N]
    """Slab test: entry/exit distances of each ray through the box (near >= min_near)."""
    safe_d = torch.where(rays_d.abs() < 1e-12, torch.full_like(rays_d, 1e-12), rays_d)
    t0 = (aabb[:3] - rays_o) / safe_d
    t1 = (aabb[3:] - rays_o) / safe_d
    near = torch.minimum(t0, t1).amax(-1).clamp_min(min_near)
    far = torch.maximum(t0, t1).amin(-1)
    hit = far > near
    return near, torch.where(hit, far, near), hit


def composite(
    sigma: Tensor, dt: Tensor, values: dict[str, Tensor]
) -> tuple[Tensor, dict[str, Tensor]]:  # [N, S], [N], {name: [N, S, k]} -> opacity [N], {name: [N, k]}
    """Alpha compositing: weight_i = T_i (1 - exp(-sigma_i dt)), T_i = exp(-sum_{j<i} sigma_j dt)."""
    tau = sigma * dt[:, None]  # [N, S] optical depth of each sample
    transmittance = torch.exp(-(torch.cumsum(tau, dim=-1) - tau))
    weights = transmittance * (1.0 - torch.exp(-tau))  # [N, S]
    return weights.sum(-1), {name: (weights[..., None] * v).sum(1) for name, v in values.items()}


def _scatter(values: Tensor, keep: Tensor, shape: tuple[int, int]) -> Tensor:  # [M, ...] -> [N, S, ...]
    """Dense per-sample tensor with zeros where samples were skipped (differentiable in `values`)."""
    dense = values.new_zeros(shape[0] * shape[1], *values.shape[1:])
    return dense.index_put((keep,), values).view(*shape, *values.shape[1:])


class RayMarcher(nn.Module):
    """Marches rays through the box with `num_samples` stratified samples; knows nothing about the field."""

    def __init__(self, num_samples: int = 16, perturb: bool = True, min_near: float = 0.05) -> None:
        super().__init__()
        self.num_samples, self.perturb, self.min_near = num_samples, perturb, min_near

    def forward(
        self,
        rays_o: Tensor,  # [N, 3]
        rays_d: Tensor,  # [N, 3] unit length
        field_fn: FieldFn,
        aabb: Sequence[float] | Tensor,  # [6]
        grid: OccupancyGrid | None = None,
        bg_color: Tensor | Sequence[float] = (1.0, 1.0, 1.0),  # [N, 3] or [3]
    ) -> RenderOutputs:
        """Render rays: sample, skip empty cells, evaluate the field on kept samples, composite."""
        aabb = torch.as_tensor(aabb, dtype=rays_o.dtype, device=rays_o.device)
        near, far, hit = intersect_aabb(rays_o, rays_d, aabb, self.min_near)
        t, dt = self._sample_distances(near, far)  # [N, S], [N]
        x = rays_o[:, None] + t[..., None] * rays_d[:, None]  # [N, S, 3]
        keep = hit[:, None].expand_as(t)
        if grid is not None:
            keep = keep & grid.occupied(x.reshape(-1, 3)).view_as(t)
        kept = keep.reshape(-1).nonzero().squeeze(1)  # [M] flat sample ids
        d = rays_d[:, None].expand_as(x).reshape(-1, 3)
        out = field_fn(x.reshape(-1, 3)[kept], d[kept])
        shape = tuple(t.shape)
        values = {"rgb": _scatter(out.rgb, kept, shape), "depth": t[..., None]}
        values.update({name: _scatter(v, kept, shape) for name, v in out.extras.items()})
        opacity, composited = composite(_scatter(out.sigma, kept, shape), dt, values)
        bg = torch.as_tensor(bg_color, dtype=rays_o.dtype, device=rays_o.device).expand_as(rays_o)
        return RenderOutputs(
            rgb=composited.pop("rgb") + (1.0 - opacity)[:, None] * bg,
            depth=composited.pop("depth")[:, 0],
            opacity=opacity,
            extras=composited,
            samples_evaluated=int(kept.numel()),
        )

    def _sample_distances(self, near: Tensor, far: Tensor) -> tuple[Tensor, Tensor]:  # -> t [N, S], dt [N]
        """One sample per equal bin of [near, far]: jittered in training, bin centres otherwise."""
        n = self.num_samples
        offsets = torch.rand(near.shape[0], n, device=near.device) if self.perturb and self.training else 0.5
        bins = torch.arange(n, device=near.device, dtype=near.dtype) + offsets
        dt = (far - near) / n  # each sample stands for its whole bin, so the dt sum to far - near
        return near[:, None] + bins * dt[:, None], dt


@torch.no_grad()
def render_image(
    marcher: RayMarcher,
    field_fn: FieldFn,
    c2w: Tensor,  # [4, 4] in ngp space
    intrinsics: Sequence[float] | Tensor,  # (fx, fy, cx, cy)
    H: int,
    W: int,
    aabb: Sequence[float] | Tensor,
    grid: OccupancyGrid | None = None,
    bg_color: Tensor | Sequence[float] = (1.0, 1.0, 1.0),  # [H, W, 3] or [3]
    chunk: int = 4096,
) -> dict[str, Tensor]:  # rgb [H, W, 3], depth [H, W], opacity [H, W], extras [H, W, k]
    """Render a whole image in chunks of rays, without gradients (validation and inference)."""
    rays_o, rays_d = get_rays(c2w[None], intrinsics, H, W)
    rays_o, rays_d = rays_o[0], rays_d[0]  # [H * W, 3]
    bg = torch.as_tensor(bg_color, dtype=rays_o.dtype, device=rays_o.device).expand(H, W, 3).reshape(-1, 3)
    parts: dict[str, list[Tensor]] = {}
    for start in range(0, H * W, chunk):
        sl = slice(start, start + chunk)
        out = marcher(rays_o[sl], rays_d[sl], field_fn, aabb, grid, bg[sl])
        for name, value in {"rgb": out.rgb, "depth": out.depth, "opacity": out.opacity, **out.extras}.items():
            parts.setdefault(name, []).append(value)
    return {name: torch.cat(v).reshape(H, W, *v[0].shape[1:]) for name, v in parts.items()}
