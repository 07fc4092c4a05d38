"""Fused Triton hash-grid encoder (forward + backward) following docs/design/model_api.md's layout.

One launch encodes every level and, for the tri-plane, every plane: each program owns a tile of
BLOCK points x all L*F output columns x 2^D corners of one plane, so x is read and the output
written as whole rows and the level tables are loaded once per tile. The backward scatters into
fp32 buffers (exact accumulation even for half embeddings) with PTX `red` adds. The gradient w.r.t.
the points, which the torso's deformation learns through, is a third kernel, launched only when the points require
it.
Without CUDA the kernels run only under Triton's interpreter (`TRITON_INTERPRET=1`), for tests.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import FunctionCtx

from ernerf.errors import ErnerfError
from ernerf.triton_device import require_kernel_device

# The three ER-NeRF planes, in output order: xy, yz, xz.
TRIPLANE_DIMS = ((0, 1), (1, 2), (0, 2))
_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MAX_PLANES = 3
# A program's tile holds BLOCK points x next_pow2(L * F) columns x 2^D corners ~ _TILE_ELEMENTS lanes.
# The sizes are the fastest found for ER-NeRF's tri-plane (BLOCK 32 x 16 columns x 4 corners, 8 warps;
# docs/performance.md, "Figures behind code choices").
_TILE_ELEMENTS = 2048
_NUM_WARPS = 8


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
def _program_plane_and_tile(P: tl.constexpr):
    """(plane, point tile) of this program: planes vary fastest so the three tables' atomics interleave."""
    pid = tl.program_id(0)
    return pid % P, pid // P


@triton.jit
def _grid_coord(x_ptr, dims_ptr, plane, d: tl.constexpr, D: tl.constexpr, rows, row_ok, stride_x, bound, scale):
    """Integer cell corner [B, C] and fractional position [B, C] along input dim d at every level."""
    column = tl.load(dims_ptr + plane * D + d)
    xd = tl.load(x_ptr + rows * stride_x + column, mask=row_ok, other=0.0).to(tl.float32)
    # IEEE division (Triton's `/` is approximate): one ulp of u moves p by R ulps, i.e. ~3e-5 at R = 512.
    u = tl.minimum(tl.maximum(tl.math.div_rn(xd + bound, 2.0 * bound), 0.0), 1.0)
    p = u[:, None] * scale[None, :]
    p0 = tl.floor(p)
    return p0.to(tl.int32), p - p0


@triton.jit
def _axis(c, f, d: tl.constexpr, corner, res):
    """Coordinate [B, C, K] (clamped to the grid) and 1-D weight [B, C, K] along dim d of every corner."""
    bit = (corner >> d) & 1  # [K]: corner k takes the upper neighbour along d when bit d of k is set
    coord = tl.minimum(c[:, :, None] + bit[None, None, :], res[None, :, None] - 1)
    weight = tl.where(bit[None, None, :] != 0, f[:, :, None], 1.0 - f[:, :, None])
    return coord, weight


@triton.jit
def _corner_row(a0, a1, a2, res, hashed, LOG2_T: tl.constexpr, D: tl.constexpr):
    """Row within a level: dense a0 + a1 R + a2 R^2, or the uint32 XOR-prime hash mod 2^log2."""
    res = res[None, :, None]
    dense = a0 + a1 * res
    # uint32 products wrap exactly like the spec's (c * prime) & 0xFFFFFFFF; the final mask is < 2^32.
    h = a0.to(tl.uint32) ^ (a1.to(tl.uint32) * 2654435761)
    if D == 3:
        dense += a2 * res * res
        h = h ^ (a2.to(tl.uint32) * 805459861)
    return tl.where(hashed[None, :, None], (h & ((1 << LOG2_T) - 1)).to(tl.int32), dense)


@triton.jit
def _tile(
    x_ptr, dims_ptr, offsets_ptr, res_ptr, plane, tile, n_points, stride_x, bound,
    D: tl.constexpr, F: tl.constexpr, L: tl.constexpr, LOG2_T: tl.constexpr, BLOCK: tl.constexpr,
    COLS: tl.constexpr,
):
    """Rows [B], columns [C], mask [B, C], and element offsets + weights [B, C, K] of all 2^D corners."""
    rows, cols, ok, element, w0, w1, w2, scale = _tile_axes(
        x_ptr, dims_ptr, offsets_ptr, res_ptr, plane, tile, n_points, stride_x, bound, D, F, L, LOG2_T, BLOCK, COLS
    )
    w = w0 * w1
    if D == 3:
        w = w * w2
    return rows, cols, ok, element, w


@triton.jit
def _tile_axes(
    x_ptr, dims_ptr, offsets_ptr, res_ptr, plane, tile, n_points, stride_x, bound,
    D: tl.constexpr, F: tl.constexpr, L: tl.constexpr, LOG2_T: tl.constexpr, BLOCK: tl.constexpr,
    COLS: tl.constexpr,
):
    """`_tile` with the corners' 1-D weights [B, C, K] along each axis apart (w2 = w1 when D == 2, unused) and
    each level's grid scale [C] (R - 1).

    The corner axis is innermost, so one gather/scatter instruction covers all corners and the two
    corners along x (rows r, r + 1 when dense; rows differing in low bits when hashed), which
    usually share a 32-byte sector, sit in neighbouring lanes.
    """
    rows = tile * BLOCK + tl.arange(0, BLOCK)
    row_ok = rows < n_points
    rows = rows.to(tl.int64)  # N * L * F may pass 2^31 at large batches
    cols = tl.arange(0, COLS)
    col_ok = cols < L * F
    level = cols // F
    offset = tl.load(offsets_ptr + level, mask=col_ok, other=0)
    res = tl.load(res_ptr + level, mask=col_ok, other=2)
    volume = res.to(tl.int64) * res
    if D == 3:
        volume = volume * res
    hashed = volume > (1 << LOG2_T)  # dense only while the R^D rows fit the table
    scale = (res - 1).to(tl.float32)
    corner = tl.arange(0, 2**D)
    c, f = _grid_coord(x_ptr, dims_ptr, plane, 0, D, rows, row_ok, stride_x, bound, scale)
    a0, w0 = _axis(c, f, 0, corner, res)
    c, f = _grid_coord(x_ptr, dims_ptr, plane, 1, D, rows, row_ok, stride_x, bound, scale)
    a1, w1 = _axis(c, f, 1, corner, res)
    a2, w2 = a0, w1  # unused for D == 2
    if D == 3:
        c, f = _grid_coord(x_ptr, dims_ptr, plane, 2, D, rows, row_ok, stride_x, bound, scale)
        a2, w2 = _axis(c, f, 2, corner, res)
    row = _corner_row(a0, a1, a2, res, hashed, LOG2_T, D)
    element = (offset * F + cols % F)[None, :, None] + row * F
    ok = row_ok[:, None] & col_ok[None, :]
    return rows, cols, ok, element, w0, w1, w2, scale


@triton.jit
def _hashgrid_fwd_kernel(
    x_ptr, dims_ptr, offsets_ptr, res_ptr, emb0_ptr, emb1_ptr, emb2_ptr, out_ptr,
    n_points, stride_x, bound,
    D: tl.constexpr, F: tl.constexpr, L: tl.constexpr, P: tl.constexpr, LOG2_T: tl.constexpr,
    BLOCK: tl.constexpr, COLS: tl.constexpr,
):
    """out[n, p*L*F + l*F + f] = sum_k w_k(x_n) emb_p[offset_l + row_k, f], fp32 accumulation."""
    plane, tile = _program_plane_and_tile(P)
    emb_ptr = _plane_pointer(plane, emb0_ptr, emb1_ptr, emb2_ptr)
    rows, cols, ok, element, w = _tile(
        x_ptr, dims_ptr, offsets_ptr, res_ptr, plane, tile, n_points, stride_x, bound, D, F, L, LOG2_T, BLOCK, COLS
    )
    value = tl.load(emb_ptr + element, mask=ok[:, :, None], other=0.0)
    out = tl.sum(w * value.to(tl.float32), axis=2)
    tl.store(out_ptr + rows[:, None] * (P * L * F) + plane * (L * F) + cols[None, :], out, mask=ok)


@triton.jit
def _scatter_add(ptr, value, mask, USE_RED: tl.constexpr):
    """ptr[i] += value[i] where mask: PTX `red` (no value returned) on GPUs, tl.atomic_add in the interpreter."""
    if USE_RED:
        # tl.atomic_add lowers to `atom`, which returns the old value we never read; `red` does not.
        tl.inline_asm_elementwise(
            "{ .reg .pred p; setp.ne.b32 p, $3, 0; @p red.global.add.f32 [$1], $2; mov.b32 $0, 0; }",
            "=r,l,r,r", [ptr.to(tl.int64), value, mask.to(tl.int32)], dtype=tl.int32, is_pure=False, pack=1,
        )
    else:
        # Ordering is irrelevant to a sum, so "relaxed" skips the fences the default acq_rel adds.
        tl.atomic_add(ptr, value, mask=mask, sem="relaxed")


@triton.jit
def _hashgrid_bwd_kernel(
    x_ptr, dims_ptr, offsets_ptr, res_ptr, grad_out_ptr, stride_g, grad0_ptr, grad1_ptr, grad2_ptr,
    n_points, stride_x, bound,
    D: tl.constexpr, F: tl.constexpr, L: tl.constexpr, P: tl.constexpr, LOG2_T: tl.constexpr,
    BLOCK: tl.constexpr, COLS: tl.constexpr, USE_RED: tl.constexpr,
):
    """grad_emb_p[offset_l + row_k, f] += w_k(x_n) * grad_out[n, p*L*F + l*F + f] (relaxed fp32 atomics)."""
    plane, tile = _program_plane_and_tile(P)
    grad_ptr = _plane_pointer(plane, grad0_ptr, grad1_ptr, grad2_ptr)
    rows, cols, ok, element, w = _tile(
        x_ptr, dims_ptr, offsets_ptr, res_ptr, plane, tile, n_points, stride_x, bound, D, F, L, LOG2_T, BLOCK, COLS
    )
    g = tl.load(grad_out_ptr + rows[:, None] * stride_g + plane * (L * F) + cols[None, :], mask=ok, other=0.0)
    value = w * g.to(tl.float32)[:, :, None]
    # Zero gradients add nothing: skipping them matters when a CUDA graph pads its fixed sample capacity with
    # copies of one point, whose (zero) gradients would otherwise all hit the same rows, serialising the atomics.
    _scatter_add(grad_ptr + element, value, ok[:, :, None] & (value != 0.0), USE_RED)


@triton.jit
def _axis_slope(x_ptr, dims_ptr, plane, d: tl.constexpr, D: tl.constexpr, rows, row_ok, stride_x, bound, g_value,
                w_others, scale):
    """d out / d x_d summed over a point's columns [B]: each corner's weight changes along d with slope
    +-(R - 1) / (2 bound) times its weights along the other axes; zero where the point was clamped to the box."""
    corner = tl.arange(0, 2**D)
    sign = tl.where(((corner >> d) & 1) != 0, 1.0, -1.0)  # [K]
    per_column = tl.sum(g_value * w_others * sign[None, None, :], axis=2)  # [B, C]
    slope = tl.sum(per_column * (scale / (2.0 * bound))[None, :], axis=1)  # [B]
    column = tl.load(dims_ptr + plane * D + d)
    xd = tl.load(x_ptr + rows * stride_x + column, mask=row_ok, other=0.0).to(tl.float32)
    return tl.where((xd >= -bound) & (xd <= bound), slope, 0.0)


@triton.jit
def _hashgrid_bwd_x_kernel(
    x_ptr, dims_ptr, offsets_ptr, res_ptr, grad_out_ptr, stride_g, emb0_ptr, emb1_ptr, emb2_ptr, gx_ptr,
    n_points, stride_x, bound,
    D: tl.constexpr, F: tl.constexpr, L: tl.constexpr, P: tl.constexpr, LOG2_T: tl.constexpr,
    BLOCK: tl.constexpr, COLS: tl.constexpr,
):
    """gx[p, n, d] = sum_{l, f, k} grad_out[n, p*L*F + l*F + f] * emb_p[offset_l + row_k, f] * d w_k / d x_d: each
    plane's share of the points' gradient, summed over planes (and mapped to x's columns) by the caller."""
    plane, tile = _program_plane_and_tile(P)
    emb_ptr = _plane_pointer(plane, emb0_ptr, emb1_ptr, emb2_ptr)
    rows, cols, ok, element, w0, w1, w2, scale = _tile_axes(
        x_ptr, dims_ptr, offsets_ptr, res_ptr, plane, tile, n_points, stride_x, bound, D, F, L, LOG2_T, BLOCK, COLS
    )
    row_ok = rows < n_points
    g = tl.load(grad_out_ptr + rows[:, None] * stride_g + plane * (L * F) + cols[None, :], mask=ok, other=0.0)
    value = tl.load(emb_ptr + element, mask=ok[:, :, None], other=0.0).to(tl.float32)
    g_value = value * g.to(tl.float32)[:, :, None]  # [B, C, K]
    out = gx_ptr + (plane * n_points + rows) * D
    if D == 3:
        tl.store(out, _axis_slope(x_ptr, dims_ptr, plane, 0, D, rows, row_ok, stride_x, bound, g_value, w1 * w2,
                                  scale), mask=row_ok)
        tl.store(out + 1, _axis_slope(x_ptr, dims_ptr, plane, 1, D, rows, row_ok, stride_x, bound, g_value, w0 * w2,
                                      scale), mask=row_ok)
        tl.store(out + 2, _axis_slope(x_ptr, dims_ptr, plane, 2, D, rows, row_ok, stride_x, bound, g_value, w0 * w1,
                                      scale), mask=row_ok)
    else:
        tl.store(out, _axis_slope(x_ptr, dims_ptr, plane, 0, D, rows, row_ok, stride_x, bound, g_value, w1, scale),
                 mask=row_ok)
        tl.store(out + 1, _axis_slope(x_ptr, dims_ptr, plane, 1, D, rows, row_ok, stride_x, bound, g_value, w0,
                                      scale), mask=row_ok)


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
    if first.numel() >= 2**31:
        raise ErnerfError(f"triton hash grid indexes tables with int32; {tuple(first.shape)} is too large")
    if len(planes[0]) not in (2, 3):
        raise ErnerfError(f"triton hash grid supports 2D and 3D grids, got {len(planes[0])} dims")
    require_kernel_device(x, "hash grid", "use the encoder's backend 'torch'")


def _launch_args(num_points: int, dims: Tensor, num_levels: int, level_dim: int) -> tuple[tuple[int], dict]:
    """1-D grid (planes x point tiles) and the compile-time arguments shared by both kernels."""
    num_planes, input_dim = dims.shape
    cols = triton.next_power_of_2(num_levels * level_dim)
    block = min(128, max(4, _TILE_ELEMENTS // (cols * 2**input_dim)))
    # No FMA contraction: fma(u, R - 1, -floor(p)) would differ from the reference's rounded p - floor(p).
    meta = {"D": input_dim, "F": level_dim, "L": num_levels, "P": num_planes, "BLOCK": block, "COLS": cols,
            "num_warps": _NUM_WARPS, "enable_fp_fusion": False}
    return (triton.cdiv(num_points, block) * num_planes,), meta


def _pad_planes(tensors: Sequence[Tensor]) -> list[Tensor]:
    """Three pointers for the kernels' plane switch; unused slots repeat the first tensor."""
    return list(tensors) + [tensors[0]] * (_MAX_PLANES - len(tensors))


# The kernels are registered as custom operators (forward, backward and the autograd link between them), so
# torch.compile treats the encoding as one opaque op and can compile the MLPs around it.
@torch.library.custom_op("ernerf::hashgrid_encode", mutates_args=())
def _encode_op(x: Tensor, dims: Tensor, offsets_t: Tensor, res_t: Tensor, log2_hashmap_size: int, bound: float,
               embeddings: list[Tensor]) -> Tensor:
    """One launch over (point tiles x planes) writing [N, P * L * F] fp32 features."""
    num_levels, level_dim = res_t.shape[0], embeddings[0].shape[1]
    x = x if x.stride(-1) == 1 else x.contiguous()
    out = x.new_empty(x.shape[0], dims.shape[0] * num_levels * level_dim, dtype=torch.float32)
    grid, meta = _launch_args(x.shape[0], dims, num_levels, level_dim)
    if x.shape[0] > 0:
        tables = _pad_planes([e.contiguous() for e in embeddings])
        _hashgrid_fwd_kernel[grid](
            x, dims, offsets_t, res_t, *tables, out, x.shape[0], x.stride(0), bound, LOG2_T=log2_hashmap_size, **meta
        )
    return out


@_encode_op.register_fake
def _(x, dims, offsets_t, res_t, log2_hashmap_size, bound, embeddings):
    return x.new_empty(x.shape[0], dims.shape[0] * res_t.shape[0] * embeddings[0].shape[1], dtype=torch.float32)


@torch.library.custom_op("ernerf::hashgrid_encode_backward", mutates_args=())
def _encode_backward_op(grad_out: Tensor, x: Tensor, dims: Tensor, offsets_t: Tensor, res_t: Tensor,
                        log2_hashmap_size: int, bound: float, embeddings: list[Tensor]) -> list[Tensor]:
    """Scatter grad_out into fp32 buffers with atomics, then cast to each embedding's dtype."""
    grads = [x.new_zeros(e.shape, dtype=torch.float32) for e in embeddings]
    grad_out = grad_out if grad_out.stride(-1) == 1 else grad_out.contiguous()
    x = x if x.stride(-1) == 1 else x.contiguous()
    grid, meta = _launch_args(x.shape[0], dims, res_t.shape[0], embeddings[0].shape[1])
    if x.shape[0] > 0:
        _hashgrid_bwd_kernel[grid](
            x, dims, offsets_t, res_t, grad_out, grad_out.stride(0), *_pad_planes(grads), x.shape[0], x.stride(0),
            bound, LOG2_T=log2_hashmap_size, USE_RED=x.is_cuda, **meta,
        )
    return [g.to(e.dtype) for g, e in zip(grads, embeddings)]


@_encode_backward_op.register_fake
def _(grad_out, x, dims, offsets_t, res_t, log2_hashmap_size, bound, embeddings):
    return [torch.empty_like(e) for e in embeddings]


@torch.library.custom_op("ernerf::hashgrid_encode_backward_points", mutates_args=())
def _encode_backward_points_op(grad_out: Tensor, x: Tensor, dims: Tensor, offsets_t: Tensor, res_t: Tensor,
                               log2_hashmap_size: int, bound: float, embeddings: list[Tensor]) -> Tensor:
    """The points' gradient [N, X] (x's shape): each plane's share per grid axis, added into the column of x that
    feeds that axis."""
    num_planes, input_dim = dims.shape
    grad_out = grad_out if grad_out.stride(-1) == 1 else grad_out.contiguous()
    xc = x if x.stride(-1) == 1 else x.contiguous()
    shares = x.new_zeros(num_planes, x.shape[0], input_dim, dtype=torch.float32)  # [P, N, D]
    grid, meta = _launch_args(x.shape[0], dims, res_t.shape[0], embeddings[0].shape[1])
    if x.shape[0] > 0:
        _hashgrid_bwd_x_kernel[grid](
            xc, dims, offsets_t, res_t, grad_out, grad_out.stride(0), *_pad_planes([e.contiguous() for e in embeddings]),
            shares, x.shape[0], xc.stride(0), bound, LOG2_T=log2_hashmap_size, **meta,
        )
    grad_x = x.new_zeros(x.shape, dtype=torch.float32)
    grad_x.index_add_(1, dims.reshape(-1).long(), shares.permute(1, 0, 2).reshape(x.shape[0], -1))
    return grad_x.to(x.dtype)


@_encode_backward_points_op.register_fake
def _(grad_out, x, dims, offsets_t, res_t, log2_hashmap_size, bound, embeddings):
    return torch.empty_like(x)


def _setup_context(ctx: FunctionCtx, inputs: tuple, output: Tensor) -> None:
    x, dims, offsets_t, res_t, log2_hashmap_size, bound, embeddings = inputs
    ctx.save_for_backward(x, dims, offsets_t, res_t, *embeddings)  # embeddings: shapes and dtypes of the grads
    ctx.config = (log2_hashmap_size, bound)


def _backward(ctx: FunctionCtx, grad_out: Tensor) -> tuple:
    """Gradients w.r.t. the embeddings, and w.r.t. the points where they require one."""
    x, dims, offsets_t, res_t, *embeddings = ctx.saved_tensors
    grads = _encode_backward_op(grad_out, x, dims, offsets_t, res_t, *ctx.config, embeddings)
    grad_x = (_encode_backward_points_op(grad_out, x, dims, offsets_t, res_t, *ctx.config, embeddings)
              if ctx.needs_input_grad[0] else None)
    return grad_x, None, None, None, None, None, grads


_encode_op.register_autograd(_backward, setup_context=_setup_context)


def encode_planes(
    x: Tensor,  # [N, >= D]
    embeddings: Sequence[Tensor],  # P x [offsets[-1], F]
    offsets: Sequence[int] | Tensor,  # [L + 1]
    resolutions: Sequence[int] | Tensor,  # [L]
    log2_hashmap_size: int,
    bound: float,
    planes: Sequence[Sequence[int]],  # P x D columns of x feeding each grid
) -> Tensor:  # [N, P * L * F] float32
    """Encode P hash grids (each reading its own columns of x) in one forward launch; the backward is one launch for
    the tables and, where x requires a gradient, one for the points."""
    _check_inputs(x, embeddings, offsets, resolutions, planes)
    offsets_t, res_t = _level_tables(offsets, resolutions, x.device)
    dims = _plane_dims(planes, x.device)
    return _encode_op(x, dims, offsets_t, res_t, int(log2_hashmap_size), float(bound), list(embeddings))


def hashgrid_triton(
    x: Tensor,  # [N, D] in [-bound, bound]
    embeddings: Tensor,  # [offsets[-1], F] fp32 / fp16 / bf16
    offsets: Sequence[int] | Tensor,  # [L + 1]
    resolutions: Sequence[int] | Tensor,  # [L]
    log2_hashmap_size: int,
    bound: float = 1.0,
) -> Tensor:  # [N, L * F] float32
    """Triton twin of `hashgrid_torch` (same signature and gradients)."""
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
