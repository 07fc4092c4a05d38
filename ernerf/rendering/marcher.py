"""Stratified ray marching with occupancy-grid compaction and alpha compositing (pure PyTorch)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn

from ernerf.rendering.occupancy import OccupancyGrid
from ernerf.rendering.rays import get_rays


class SampleValues(Protocol):
    """What the marcher composites of M samples, whatever field made them (a field's outputs have these)."""

    sigma: Tensor  # [M] density >= 0
    rgb: Tensor  # [M, 3] in [0, 1]
    extras: dict[str, Tensor]  # name -> [M, k], composited with the same weights as colour


FieldFn = Callable[[Tensor, Tensor], SampleValues]  # (x [M, 3], d [M, 3]) -> values of M samples
# With rays in groups (frames of a batch, each under its own conditioning): (x, d, group of each sample [M]) -> values
GroupedFieldFn = Callable[[Tensor, Tensor, Tensor], SampleValues]


@dataclass
class RenderOutputs:
    """Per-ray results of compositing."""

    rgb: Tensor  # [N, 3], background blended in
    depth: Tensor  # [N], expected distance along the unit ray (weights not renormalised)
    opacity: Tensor  # [N], accumulated alpha
    extras: dict[str, Tensor]  # name -> [N, k], composited with the same weights as colour
    samples_evaluated: int  # samples the field was called on (after compaction; the capacity when one is given)
    samples_occupied: Tensor | None = None  # [] samples in occupied cells, when marched with a fixed capacity


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


def composite(sigma: Tensor, dt: Tensor, values: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Alpha compositing: weight_i = T_i (1 - exp(-sigma_i dt)), T_i = exp(-sum_{j<i} sigma_j dt).

    sigma [N, S], dt [N], values [N, S, K] -> opacity [N], composited values [N, K], weights [N, S].
    """
    tau = sigma * dt[:, None]  # [N, S] optical depth of each sample
    # Exclusive prefix sum as a product with a strictly upper-triangular matrix: one small GEMM forward and
    # backward, where cumsum's scan over a short innermost dim is a slow kernel on a GPU (docs/performance.md).
    # Clamped first: a density that overflowed to inf (trunc_exp is exp in the forward pass) times the matrix's
    # zeros is NaN, which poisoned whole rays and, on the CPU demo, emptied the occupancy grid. exp(-50) ~ 2e-22:
    # the clamp changes no weight.
    tau = tau.clamp(max=50.0)
    steps = sigma.shape[1]
    before = torch.ones(steps, steps, dtype=tau.dtype, device=tau.device).triu(1)  # [S, S]: j < i
    weights = torch.exp(-(tau @ before)) * -torch.expm1(-tau)  # [N, S]
    values = values.to(weights.dtype)
    # A product and a sum over S, not a bmm: [N] batched 1x16 @ 16xK products run as GEMV kernels far below the
    # memory bandwidth on a GPU (docs/performance.md, "Figures behind code choices"). One path on every device.
    composited = (weights[..., None] * values).sum(1)
    return weights.sum(-1), composited, weights


def _scatter(values: Tensor, keep: Tensor, shape: tuple[int, int]) -> Tensor:  # [M, ...] -> [N, S, ...]
    """Dense per-sample tensor with zeros where samples were skipped (differentiable in `values`).

    Ids equal to N * S (the padding of `compact_static`) land in one extra row that is dropped."""
    count = shape[0] * shape[1]
    dense = values.new_zeros(count + 1, *values.shape[1:])
    return dense.index_put((keep,), values)[:count].view(*shape, *values.shape[1:])


def compact_static(keep: Tensor, capacity: int) -> tuple[Tensor, Tensor]:  # bool [K] -> ids [capacity], count []
    """Ids of the first `capacity` True entries, padded with K; no host sync, so a CUDA graph can hold it.

    Entries past the capacity are dropped (their samples count as empty space); `count` says how many were True.
    """
    flat = keep.reshape(-1)
    position = torch.cumsum(flat, 0) - 1  # [K] slot of each kept entry
    slot = torch.where(flat & (position < capacity), position, capacity)  # the rest go to a spare slot
    ids = torch.full((capacity + 1,), flat.numel(), dtype=torch.long, device=flat.device)
    ids.scatter_(0, slot, torch.arange(flat.numel(), device=flat.device))
    return ids[:capacity], position[-1] + 1


class RayMarcher(nn.Module):
    """Marches rays through the box with `num_samples` stratified samples; knows nothing about the field.

    render_max_samples: outside training, each ray evaluates at most its first this many samples in occupied cells
    (None: all of them). Behind an opaque surface the rest add nothing; where a ray's first occupied cells are
    nearly empty (thin hair, the grid's margin) it cuts what lies behind them. A speed setting for eager renders, whose
    time follows the samples they evaluate (graphed GPU frames were measured no faster, their smaller capacity
    notwithstanding: docs/performance.md), measured against the full render by bench/render_samples.py; training
    always marches every occupied sample.
    """

    def __init__(self, num_samples: int = 16, perturb: bool = True, min_near: float = 0.05,
                 render_max_samples: int | None = None) -> None:
        super().__init__()
        if render_max_samples is not None and render_max_samples < 1:
            raise ValueError(f"render_max_samples must be at least 1 (or None for all), got {render_max_samples}")
        self.num_samples, self.perturb, self.min_near = num_samples, perturb, min_near
        self.render_max_samples = render_max_samples

    def forward(
        self,
        rays_o: Tensor,  # [N, 3]
        rays_d: Tensor,  # [N, 3] unit length
        field_fn: FieldFn,
        aabb: Sequence[float] | Tensor,  # [6]
        grid: OccupancyGrid | None = None,
        bg_color: Tensor | Sequence[float] = (1.0, 1.0, 1.0),  # [N, 3] or [3]
        capacity: int | None = None,
        extras: bool = True,
        groups: Tensor | None = None,  # [N] long
    ) -> RenderOutputs:
        """Render rays: sample, skip empty cells, evaluate the field on kept samples, composite.

        With `capacity`, the field sees exactly that many samples (padding included) and nothing syncs with the
        host: the shapes a CUDA graph needs. Without it, exactly the occupied samples. `extras=False` composites
        colour, depth and opacity only (rendering frames: the per-ray dense tensors are then half as wide).
        `groups`: a number per ray that the field receives with each of its samples (`GroupedFieldFn`), e.g. which
        frame of a batch the ray belongs to; what it means is the field's business."""
        aabb = torch.as_tensor(aabb, dtype=rays_o.dtype, device=rays_o.device)
        near, far, hit = intersect_aabb(rays_o, rays_d, aabb, self.min_near)
        t, dt = self._sample_distances(near, far)  # [N, S], [N]
        keep = hit[:, None].expand_as(t) if grid is None else grid.occupied_samples(rays_o, rays_d, t, hit)
        if self.render_max_samples is not None and not self.training and self.render_max_samples < t.shape[1]:
            keep = keep & (keep.cumsum(1) <= self.render_max_samples)  # each ray's first occupied samples
        occupied = None
        if capacity is None:
            kept = keep.reshape(-1).nonzero().squeeze(1)  # [M] flat sample ids
            gather = kept
        else:
            kept, occupied = compact_static(keep, capacity)
            gather = kept.clamp(max=keep.numel() - 1)  # padding evaluates a real sample; its outputs are dropped
        # Positions of the kept samples only (the same arithmetic as for the occupancy test: t * d, then + o).
        ray = gather // t.shape[1]
        d = rays_d[ray]
        x = rays_o[ray] + t.reshape(-1)[gather, None] * d
        out = field_fn(x, d) if groups is None else field_fn(x, d, groups[ray])
        # sigma and colour (+ extras) scattered to dense [N, S] tensors, composited with one weighted sum.
        names = list(out.extras) if extras else []
        values = torch.cat([out.rgb.float(), *(out.extras[n].float() for n in names)], -1) if names else out.rgb.float()
        sigma = _scatter(out.sigma.float(), kept, tuple(t.shape))  # [N, S]
        dense = _scatter(values, kept, tuple(t.shape))  # [N, S, K]
        opacity, composited, weights = composite(sigma, dt, dense)  # [N], [N, K], [N, S]
        bg = torch.as_tensor(bg_color, dtype=rays_o.dtype, device=rays_o.device).expand_as(rays_o)
        widths = [out.extras[n].shape[-1] for n in names]
        parts = composited[:, 3:].split(widths, -1) if names else ()
        return RenderOutputs(
            rgb=composited[:, :3] + (1.0 - opacity)[:, None] * bg,
            depth=(weights * t).sum(-1),
            opacity=opacity,
            extras=dict(zip(names, parts)),
            samples_evaluated=int(kept.numel()),
            samples_occupied=occupied,
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
    capacity: int | None = None,
    extras: bool = True,
) -> dict[str, Tensor]:  # rgb [H, W, 3], depth [H, W], opacity [H, W], extras [H, W, k], occupied []
    """Render a whole image in chunks of rays, without gradients (validation and inference).

    `capacity` (samples, one chunk only) fixes every shape, as a CUDA graph needs; `occupied` counts the samples
    in occupied cells, so a caller can tell when the capacity dropped some."""
    rays_o, rays_d = get_rays(c2w[None], intrinsics, H, W)
    rays_o, rays_d = rays_o[0], rays_d[0]  # [H * W, 3]
    bg = torch.as_tensor(bg_color, dtype=rays_o.dtype, device=rays_o.device).expand(H, W, 3).reshape(-1, 3)
    out = _render_rays(marcher, field_fn, rays_o, rays_d, None, aabb, grid, bg, chunk, capacity, extras)
    return {name: value if name == "occupied" else value.reshape(H, W, *value.shape[1:]) for name, value in out.items()}


@torch.no_grad()
def render_images(
    marcher: RayMarcher,
    field_fn: GroupedFieldFn,
    c2w: Tensor,  # [B, 4, 4] in ngp space
    intrinsics: Sequence[float] | Tensor,  # (fx, fy, cx, cy), shared by the frames
    H: int,
    W: int,
    aabb: Sequence[float] | Tensor,
    grid: OccupancyGrid | None = None,
    bg_color: Tensor | Sequence[float] = (1.0, 1.0, 1.0),  # [B, H, W, 3] or [3]
    chunk: int = 4096,
    capacity: int | None = None,
    extras: bool = True,
) -> dict[str, Tensor]:  # rgb [B, H, W, 3], depth [B, H, W], opacity [B, H, W], extras [B, H, W, k], occupied []
    """Render B frames as one set of rays, chunked as `render_image` chunks one: `field_fn` gets each sample's frame
    (0 .. B-1) as its group, so every frame keeps its own conditioning."""
    frames = c2w.shape[0]
    rays_o, rays_d = (r.reshape(-1, 3) for r in get_rays(c2w, intrinsics, H, W))  # [B * H * W, 3]
    bg = torch.as_tensor(bg_color, dtype=rays_o.dtype, device=rays_o.device).expand(frames, H, W, 3).reshape(-1, 3)
    groups = torch.arange(frames, device=rays_o.device).repeat_interleave(H * W)
    out = _render_rays(marcher, field_fn, rays_o, rays_d, groups, aabb, grid, bg, chunk, capacity, extras)
    return {name: value if name == "occupied" else value.reshape(frames, H, W, *value.shape[1:])
            for name, value in out.items()}


def _render_rays(marcher: RayMarcher, field_fn: FieldFn | GroupedFieldFn, rays_o: Tensor, rays_d: Tensor,
                 groups: Tensor | None, aabb: Sequence[float] | Tensor, grid: OccupancyGrid | None, bg: Tensor,
                 chunk: int, capacity: int | None, extras: bool) -> dict[str, Tensor]:
    """Rays [N, 3] (and their groups [N], or None) marched `chunk` at a time: per-ray outputs [N, ...], occupied []."""
    rays = rays_o.shape[0]
    if capacity is not None and chunk < rays:
        raise ValueError(f"a fixed sample capacity renders the frame in one chunk (chunk={chunk} < {rays} rays)")
    parts: dict[str, list[Tensor]] = {}
    occupied = torch.zeros((), dtype=torch.long, device=rays_o.device)
    for start in range(0, rays, chunk):
        sl = slice(start, start + chunk)
        out = marcher(rays_o[sl], rays_d[sl], field_fn, aabb, grid, bg[sl], capacity=capacity, extras=extras,
                      groups=None if groups is None else groups[sl])
        occupied = occupied + (out.samples_occupied if out.samples_occupied is not None else out.samples_evaluated)
        for name, value in {"rgb": out.rgb, "depth": out.depth, "opacity": out.opacity, **out.extras}.items():
            parts.setdefault(name, []).append(value)
    return {"occupied": occupied} | {name: torch.cat(v) for name, v in parts.items()}
