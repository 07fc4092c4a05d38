"""Fused Triton hash-grid encoder (forward + backward) following docs/design/model_api.md's layout.

One launch encodes every level (and, for the tri-plane, every plane): program (i, p) owns a tile of
BLOCK points x all L*F output columns of plane p, so reads of x and writes of the output are whole
rows, and the per-level tables (offsets, resolutions) are loaded once per program. The backward
scatters into an fp32 buffer with relaxed atomic adds (exact fp32 accumulation even for half
embeddings). There is no gradient w.r.t. the points: ER-NeRF never back-propagates into positions.
Without CUDA the kernels run only under Triton's interpreter (`TRITON_INTERPRET=1`), for tests.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import FunctionCtx

from ernerf.errors import ErnerfError

# The three ER-NeRF planes, in output order: xy, yz, xz.
TRIPLANE_DIMS = ((0, 1), (1, 2), (0, 2))
_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MAX_PLANES = 3
# Tile height: 128 points x 16 columns per program kept the H100 busy at 2^18 and 2^20 points.
_BLOCK = 128
_NUM_WARPS = 4


@triton.jit
def _plane_pointer(plane, ptr0, ptr1, ptr2):
    """Base pointer of plane `plane`'s tensor: separate tensors stay separate (no torch.cat copy)."""
    if plane == 0:
        ptr = ptr0
    elif plane == 1:
        ptr = ptr1
    else:
        ptr = ptr2
    return ptr


@triton.jit
def _grid_coord(x_ptr, dims_ptr, plane, d: tl.constexpr, D: tl.constexpr, rows, row_ok, stride_x, bound, scale):
    """Integer cell corner [B, C] and fractional position [B, C] along input dim d at every level."""
    column = tl.load(dims_ptr + plane * D + d)
    xd = tl.load(x_ptr + rows * stride_x + column, mask=row_ok, other=0.0).to(tl.float32)
    u = tl.minimum(tl.maximum((xd + bound) / (2.0 * bound), 0.0), 1.0)
    p = u[:, None] * scale[None, :]
    p0 = tl.floor(p)
    return p0.to(tl.int32), p - p0


@triton.jit
def _axis(c, f, bit: tl.constexpr, res):
    """Corner coordinate (clamped to the grid) and its 1-D interpolation weight for one bit."""
    if bit:
        return tl.minimum(c + 1, res - 1), f
    else:
        return c, 1.0 - f


@triton.jit
def _corner_row(c0, c1, c2, res, hashed, mask_t, D: tl.constexpr):
    """Row within a level: dense c0 + c1 R + c2 R^2, or the uint32 XOR-prime hash mod 2^log2."""
    dense = c0 + c1 * res
    # uint32 products wrap exactly like the spec's (c * prime) & 0xFFFFFFFF; the final mask < 2^32.
    h = c0.to(tl.uint32) ^ (c1.to(tl.uint32) * 2654435761)
    if D == 3:
        dense += c2 * res * res
        h = h ^ (c2.to(tl.uint32) * 805459861)
    return tl.where(hashed, (h & mask_t).to(tl.int32), dense)


@triton.jit
def _tile_setup(
    x_ptr, dims_ptr, offsets_ptr, res_ptr, plane, n_points, stride_x, bound,
    D: tl.constexpr, F: tl.constexpr, L: tl.constexpr, LOG2_T: tl.constexpr, BLOCK: tl.constexpr,
    COLS: tl.constexpr,
):
    """Per-tile constants: rows, column masks, level tables and grid coordinates along each dim."""
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    row_ok = rows < n_points
    rows = rows.to(tl.int64)  # N * L * F may pass 2^31 at large batches
    cols = tl.arange(0, COLS)
    col_ok = cols < L * F
    level = cols // F
    offset = tl.load(offsets_ptr + level, mask=col_ok, other=0)
    res = tl.load(res_ptr + level, mask=col_ok, other=2)
    res64 = res.to(tl.int64)
    volume = res64 * res64
    if D == 3:
        volume = volume * res64
    hashed = volume > (1 << LOG2_T)  # dense only while R^D rows fit the table
    scale = (res - 1).to(tl.float32)
    c0, f0 = _grid_coord(x_ptr, dims_ptr, plane, 0, D, rows, row_ok, stride_x, bound, scale)
    c1, f1 = _grid_coord(x_ptr, dims_ptr, plane, 1, D, rows, row_ok, stride_x, bound, scale)
    if D == 3:
        c2, f2 = _grid_coord(x_ptr, dims_ptr, plane, 2, D, rows, row_ok, stride_x, bound, scale)
    else:
        c2, f2 = c0, f0  # unused for D == 2
    ok = row_ok[:, None] & col_ok[None, :]
    base = offset * F + cols % F  # element of row 0 of this level, feature column
    return rows, ok, base, res, hashed, c0, f0, c1, f1, c2, f2


@triton.jit
def _corner(k: tl.constexpr, c0, f0, c1, f1, c2, f2, res, hashed, D: tl.constexpr, LOG2_T: tl.constexpr):
    """Row (within the level) and D-linear weight of corner k (bit d of k = upper corner along d)."""
    a0, w0 = _axis(c0, f0, k & 1, res)
    a1, w1 = _axis(c1, f1, (k >> 1) & 1, res)
    w = w0 * w1
    a2 = a0
    if D == 3:
        a2, w2 = _axis(c2, f2, (k >> 2) & 1, res)
        w = w * w2
    return _corner_row(a0, a1, a2, res, hashed, (1 << LOG2_T) - 1, D), w


@triton.jit
def _hashgrid_fwd_kernel(
    x_ptr, dims_ptr, offsets_ptr, res_ptr, emb0_ptr, emb1_ptr, emb2_ptr, out_ptr,
    n_points, stride_x, bound,
    D: tl.constexpr, F: tl.constexpr, L: tl.constexpr, P: tl.constexpr, LOG2_T: tl.constexpr,
    BLOCK: tl.constexpr, COLS: tl.constexpr,
):
    """out[n, p*L*F + l*F + f] = sum_k w_k(x_n) emb_p[offset_l + row_k, f], fp32 accumulation."""
    plane = tl.program_id(1)
    emb_ptr = _plane_pointer(plane, emb0_ptr, emb1_ptr, emb2_ptr)
    rows, ok, base, res, hashed, c0, f0, c1, f1, c2, f2 = _tile_setup(
        x_ptr, dims_ptr, offsets_ptr, res_ptr, plane, n_points, stride_x, bound, D, F, L, LOG2_T, BLOCK, COLS
    )
    acc = tl.zeros((BLOCK, COLS), dtype=tl.float32)
    for k in tl.static_range(2**D):
        row, w = _corner(k, c0, f0, c1, f1, c2, f2, res, hashed, D, LOG2_T)
        value = tl.load(emb_ptr + (base[None, :] + row * F), mask=ok, other=0.0)
        acc += w * value.to(tl.float32)
    cols = tl.arange(0, COLS)
    tl.store(out_ptr + rows[:, None] * (P * L * F) + plane * (L * F) + cols[None, :], acc, mask=ok)


@triton.jit
def _hashgrid_bwd_kernel(
    x_ptr, dims_ptr, offsets_ptr, res_ptr, grad_out_ptr, stride_g, grad0_ptr, grad1_ptr, grad2_ptr,
    n_points, stride_x, bound,
    D: tl.constexpr, F: tl.constexpr, L: tl.constexpr, LOG2_T: tl.constexpr,
    BLOCK: tl.constexpr, COLS: tl.constexpr,
):
    """grad_emb_p[offset_l + row_k, f] += w_k(x_n) * grad_out[n, p*L*F + l*F + f] (relaxed fp32 atomics)."""
    plane = tl.program_id(1)
    grad_ptr = _plane_pointer(plane, grad0_ptr, grad1_ptr, grad2_ptr)
    rows, ok, base, res, hashed, c0, f0, c1, f1, c2, f2 = _tile_setup(
        x_ptr, dims_ptr, offsets_ptr, res_ptr, plane, n_points, stride_x, bound, D, F, L, LOG2_T, BLOCK, COLS
    )
    cols = tl.arange(0, COLS)
    g = tl.load(grad_out_ptr + rows[:, None] * stride_g + plane * (L * F) + cols[None, :], mask=ok, other=0.0)
    g = g.to(tl.float32)
    for k in tl.static_range(2**D):
        row, w = _corner(k, c0, f0, c1, f1, c2, f2, res, hashed, D, LOG2_T)
        # Ordering is irrelevant to a sum, so "relaxed" skips the fences the default acq_rel adds.
        tl.atomic_add(grad_ptr + (base[None, :] + row * F), w * g, mask=ok, sem="relaxed")


_TABLES: dict[tuple, tuple[Tensor, Tensor]] = {}


def _level_tables(offsets: Sequence[int] | Tensor, resolutions: Sequence[int] | Tensor, device: torch.device):
    """int32 offsets [L] and resolutions [L] on `device`, cached so steady-state calls copy nothing."""
    off = tuple(int(v) for v in (offsets.tolist() if isinstance(offsets, Tensor) else offsets))
    res = tuple(int(v) for v in (resolutions.tolist() if isinstance(resolutions, Tensor) else resolutions))
    key = (off, res, str(device))
    if key not in _TABLES:
        _TABLES[key] = (
            torch.tensor(off[:-1], dtype=torch.int32, device=device),
            torch.tensor(res, dtype=torch.int32, device=device),
        )
    return _TABLES[key]


def _plane_dims(planes: Sequence[Sequence[int]], device: torch.device) -> Tensor:
    """int32 [P, D] table of which x column feeds each grid axis of each plane (cached)."""
    key = (tuple(tuple(p) for p in planes), str(device))
    if key not in _TABLES:
        _TABLES[key] = (torch.tensor(key[0], dtype=torch.int32, device=device),)
    return _TABLES[key][0]


def _check_inputs(x: Tensor, embeddings: Sequence[Tensor], offsets, resolutions, planes) -> None:
    """Raise ErnerfError for inputs the kernels cannot encode."""
    if x.ndim != 2:
        raise ErnerfError(f"triton hash grid expects points [N, D], got shape {tuple(x.shape)}")
    if not 1 <= len(embeddings) <= _MAX_PLANES or len(planes) != len(embeddings):
        raise ErnerfError(f"triton hash grid takes 1..{_MAX_PLANES} grids with one dims tuple each")
    first = embeddings[0]
    for emb in embeddings:
        if emb.dtype not in _SUPPORTED_DTYPES or emb.shape != first.shape or emb.dtype != first.dtype:
            raise ErnerfError("triton hash grid: embeddings must share one shape and a float32/16 or bfloat16 dtype")
        if emb.ndim != 2 or emb.device != x.device:
            raise ErnerfError("triton hash grid: embeddings must be [rows, level_dim] on the points' device")
    if int(offsets[-1]) != first.shape[0] or len(offsets) != len(resolutions) + 1:
        raise ErnerfError(f"triton hash grid: offsets {list(offsets)} do not match embeddings {tuple(first.shape)}")
    if len(planes[0]) not in (2, 3):
        raise ErnerfError(f"triton hash grid supports 2D and 3D grids, got {len(planes[0])} dims")
    if x.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ErnerfError("triton hash grid needs CUDA tensors; on CPU use backend 'torch' (or TRITON_INTERPRET=1)")


def _launch_args(x: Tensor, num_levels: int, level_dim: int) -> tuple[tuple[int, int], dict]:
    """Grid and shared compile-time arguments of both kernels."""
    cols = triton.next_power_of_2(num_levels * level_dim)
    return (triton.cdiv(x.shape[0], _BLOCK),), {"F": level_dim, "L": num_levels, "BLOCK": _BLOCK, "COLS": cols}


def _pad_planes(tensors: Sequence[Tensor]) -> list[Tensor]:
    """Three pointers for the kernels' plane switch; unused slots repeat the first tensor."""
    return list(tensors) + [tensors[0]] * (_MAX_PLANES - len(tensors))


class _HashGridFunction(torch.autograd.Function):
    """Autograd wrapper: differentiable w.r.t. the embeddings only."""

    @staticmethod
    def forward(
        ctx: FunctionCtx, x: Tensor, dims: Tensor, offsets_t: Tensor, res_t: Tensor, log2_hashmap_size: int,
        bound: float, *embeddings: Tensor,
    ) -> Tensor:
        """Launch the forward kernel over (point tiles, planes)."""
        num_planes, input_dim = dims.shape
        num_levels, level_dim = res_t.shape[0], embeddings[0].shape[1]
        x = x if x.stride(-1) == 1 else x.contiguous()
        out = torch.empty(x.shape[0], num_planes * num_levels * level_dim, device=x.device, dtype=torch.float32)
        grid, meta = _launch_args(x, num_levels, level_dim)
        if x.shape[0] > 0:
            _hashgrid_fwd_kernel[grid + (num_planes,)](
                x, dims, offsets_t, res_t, *_pad_planes([e.contiguous() for e in embeddings]), out,
                x.shape[0], x.stride(0), float(bound),
                D=input_dim, P=num_planes, LOG2_T=log2_hashmap_size, num_warps=_NUM_WARPS, **meta,
            )
        ctx.save_for_backward(x, dims, offsets_t, res_t)
        ctx.config = (log2_hashmap_size, float(bound), [(e.shape, e.dtype) for e in embeddings])
        return out

    @staticmethod
    def backward(ctx: FunctionCtx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        """Scatter grad_out into fp32 buffers with atomics, then cast to each embedding's dtype."""
        x, dims, offsets_t, res_t = ctx.saved_tensors
        log2_hashmap_size, bound, specs = ctx.config
        num_planes, input_dim = dims.shape
        grads = [torch.zeros(shape, device=x.device, dtype=torch.float32) for shape, _ in specs]
        grad_out = grad_out if grad_out.stride(-1) == 1 else grad_out.contiguous()
        grid, meta = _launch_args(x, res_t.shape[0], specs[0][0][1])
        if x.shape[0] > 0:
            _hashgrid_bwd_kernel[grid + (num_planes,)](
                x, dims, offsets_t, res_t, grad_out, grad_out.stride(0), *_pad_planes(grads),
                x.shape[0], x.stride(0), bound,
                D=input_dim, LOG2_T=log2_hashmap_size, num_warps=_NUM_WARPS, **meta,
            )
        emb_grads = [g.to(dtype) for g, (_, dtype) in zip(grads, specs)]
        return (None, None, None, None, None, None, *emb_grads)


def encode_planes(
    x: Tensor,  # [N, >= D]
    embeddings: Sequence[Tensor],  # P x [offsets[-1], F]
    offsets: Sequence[int] | Tensor,  # [L + 1]
    resolutions: Sequence[int] | Tensor,  # [L]
    log2_hashmap_size: int,
    bound: float,
    planes: Sequence[Sequence[int]],  # P x D columns of x feeding each grid
) -> Tensor:  # [N, P * L * F] float32
    """Encode P hash grids (each reading its own columns of x) in one forward and one backward launch."""
    _check_inputs(x, embeddings, offsets, resolutions, planes)
    offsets_t, res_t = _level_tables(offsets, resolutions, x.device)
    dims = _plane_dims(planes, x.device)
    return _HashGridFunction.apply(x, dims, offsets_t, res_t, int(log2_hashmap_size), float(bound), *embeddings)


def hashgrid_triton(
    x: Tensor,  # [N, D] in [-bound, bound]
    embeddings: Tensor,  # [offsets[-1], F] fp32 / fp16 / bf16
    offsets: Sequence[int] | Tensor,  # [L + 1]
    resolutions: Sequence[int] | Tensor,  # [L]
    log2_hashmap_size: int,
    bound: float = 1.0,
) -> Tensor:  # [N, L * F] float32
    """Triton twin of `hashgrid_torch` (same signature); gradients flow to `embeddings`, not to x."""
    return encode_planes(x, [embeddings], offsets, resolutions, log2_hashmap_size, bound, [range(x.shape[-1])])


def triplane_triton(
    x: Tensor,  # [N, 3] in [-bound, bound]
    embeddings: Sequence[Tensor],  # 3 x [offsets[-1], F]: the xy, yz and xz grids
    offsets: Sequence[int] | Tensor,  # [L + 1] (2D layout)
    resolutions: Sequence[int] | Tensor,  # [L]
    log2_hashmap_size: int,
    bound: float = 1.0,
) -> Tensor:  # [N, 3 * L * F] float32
    """ER-NeRF's tri-plane in one launch: equals cat([grid_xy(x[:, :2]), grid_yz(x[:, 1:]), grid_xz(x[:, ::2])])."""
    if x.ndim != 2 or x.shape[-1] != 3 or len(embeddings) != 3:
        raise ErnerfError(f"tri-plane encoding expects points [N, 3] and three grids, got {tuple(x.shape)}")
    return encode_planes(x, embeddings, offsets, resolutions, log2_hashmap_size, bound, TRIPLANE_DIMS)
