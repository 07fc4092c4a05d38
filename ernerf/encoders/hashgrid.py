"""Multi-resolution hash grid (Instant-NGP) with swappable backends sharing one parameter layout.

The layout (level resolutions, offsets, dense/hashed indexing, interpolation) is specified in
docs/design/model_api.md; `hashgrid_reference` is the reference every fast backend is tested against, and
`hashgrid_torch` (the torch backend) runs it, or on a CPU a chunked path that gives the same bits (values and
gradients) faster.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import torch
from torch import Tensor, nn

from ernerf.errors import ErnerfError

# Per-dimension hash primes (dimension 0 uses 1, as in Instant-NGP), applied in uint32 arithmetic.
HASH_PRIMES = (1, 2654435761, 805459861)
BACKENDS = ("auto", "torch", "tcnn", "triton")  # auto: triton on CUDA tensors when it imports, else torch
_UINT32_MASK = 0xFFFFFFFF


def level_resolutions(num_levels: int, base_resolution: int, desired_resolution: int) -> list[int]:
    """R_l = floor(base * b**l) with b chosen so the last level reaches `desired_resolution`."""
    if num_levels == 1:
        return [base_resolution]
    growth = math.exp((math.log(desired_resolution) - math.log(base_resolution)) / (num_levels - 1))
    return [int(math.floor(base_resolution * growth**level)) for level in range(num_levels)]


def level_offsets(resolutions: list[int], input_dim: int, log2_hashmap_size: int) -> list[int]:
    """Row where each level starts in `embeddings`, plus the total row count last ([L + 1])."""
    offsets = [0]
    for resolution in resolutions:
        offsets.append(offsets[-1] + min(resolution**input_dim, 2**log2_hashmap_size))
    return offsets


def corner_index(corners: Tensor, resolution: int, log2_hashmap_size: int) -> Tensor:  # [..., D] -> [...]
    """Row within a level of integer grid corners, literally as specified: dense when R^D <= 2^log2, else hashed."""
    input_dim = corners.shape[-1]
    if resolution**input_dim <= 2**log2_hashmap_size:
        strides = torch.tensor([resolution**d for d in range(input_dim)], device=corners.device)
        return (corners * strides).sum(-1)
    index = torch.zeros_like(corners[..., 0])
    for d in range(input_dim):
        # int64 products are exact (c < 2^24, prime < 2^32); masking emulates uint32 wrap-around.
        index ^= (corners[..., d] * HASH_PRIMES[d]) & _UINT32_MASK
    return index & (2**log2_hashmap_size - 1)


@functools.lru_cache(maxsize=64)
def _level_tables(
    resolutions: tuple[int, ...], input_dim: int, log2_hashmap_size: int, device: torch.device
) -> list[tuple[bool, Tensor, Tensor]]:  # per group: hashed, resolutions [G], per-axis multiplier [G, D]
    """Levels split into the dense prefix and the hashed rest, with each group's row multipliers."""
    if list(resolutions) != sorted(resolutions):
        raise ErnerfError(f"hash-grid resolutions must grow level by level, got {list(resolutions)}")
    groups = []
    for hashed in (False, True):
        group = [r for r in resolutions if (r**input_dim > 2**log2_hashmap_size) == hashed]
        if group:
            mult = [[HASH_PRIMES[d] if hashed else r**d for d in range(input_dim)] for r in group]
            groups.append((hashed, torch.tensor(group, device=device), torch.tensor(mult, device=device)))
    return groups


def _group_rows_and_weights(
    u: Tensor, res: Tensor, mult: Tensor, hashed: bool, log2_hashmap_size: int
) -> tuple[Tensor, Tensor]:  # [N, D] -> rows [N, G, 2^D], weights [N, G, 2^D]
    """Corner rows and weights on a group of levels that are all dense or all hashed."""
    p = u[:, None, :] * (res[:, None] - 1)  # [N, G, D]
    low = p.floor()
    frac = p - low
    low = low.long()
    terms = torch.stack([low, torch.minimum(low + 1, res[:, None] - 1)], -1) * mult[..., None]  # [N, G, D, 2]
    if hashed:  # int64 products are exact (c < 2^24, prime < 2^32); masking emulates uint32 wrap-around
        terms = terms & _UINT32_MASK
    rows = torch.zeros_like(low[..., :1])  # [N, G, 1]
    weights = torch.ones_like(frac[..., :1])
    for d in range(u.shape[-1]):
        t = terms[:, :, d, None, :]  # [N, G, 1, 2]
        rows = (rows[..., None] ^ t if hashed else rows[..., None] + t).flatten(2)
        axis_w = torch.stack([1 - frac[..., d], frac[..., d]], -1)  # [N, G, 2]
        weights = (weights[..., None] * axis_w[:, :, None, :]).flatten(2)
    return (rows & (2**log2_hashmap_size - 1) if hashed else rows), weights


def grid_rows_and_weights(
    u: Tensor, resolutions: list[int], log2_hashmap_size: int
) -> tuple[Tensor, Tensor]:  # [N, D] in [0, 1] -> rows [N, L, 2^D] (within each level), weights [N, L, 2^D]
    """Rows of the 2^D corners around each point on every level, and their D-linear weights.

    Levels are processed in two vectorised groups (dense, hashed) and corners are built one axis at a
    time from low/high terms (dimension 0 varies slowest); each row equals `corner_index` of its corner.
    """
    groups = _level_tables(tuple(resolutions), u.shape[-1], log2_hashmap_size, u.device)
    parts = [_group_rows_and_weights(u, res, mult, hashed, log2_hashmap_size) for hashed, res, mult in groups]
    return torch.cat([rows for rows, _ in parts], 1), torch.cat([w for _, w in parts], 1)


def hashgrid_torch(
    x: Tensor,  # [N, D] in [-bound, bound]
    embeddings: Tensor,  # [offsets[-1], F]
    offsets: list[int],  # [L + 1]
    resolutions: list[int],  # [L]
    log2_hashmap_size: int,
    bound: float = 1.0,
) -> Tensor:  # [N, L * F]
    """Pure-PyTorch hash grid: the CPU path below where it applies, else the autograd reference.

    The CPU path gives the reference's values and gradients (of the embeddings and of the points, which the torso's
    deformation moves) bit for bit (tests/encoders/test_hashgrid.py); the gradient through the clamp below is
    autograd's. The reference runs CUDA tensors (their results stay the reference's), tables other than float32, and
    torch.compile (which fuses the reference's elementwise chains itself, and would have to trace the chunk loop).
    The CPU path has no double backward through the points: create_graph=True there raises.
    """
    u = ((x.float() + bound) / (2 * bound)).clamp(0.0, 1.0)  # [N, D]
    if u.device.type != "cpu" or embeddings.dtype != torch.float32 or torch.compiler.is_compiling():
        return hashgrid_reference(u, embeddings, offsets, resolutions, log2_hashmap_size)
    groups = level_groups(tuple(resolutions), tuple(offsets), u.shape[-1], log2_hashmap_size, u.device)
    return _CpuGridInterpolation.apply(u, embeddings, groups, log2_hashmap_size).flatten(1)


def hashgrid_reference(
    u: Tensor, embeddings: Tensor, offsets: list[int], resolutions: list[int], log2_hashmap_size: int
) -> Tensor:  # [N, D] in [0, 1] -> [N, L * F]
    """The reference: the 2^D corners of every point on every level gathered in one go, differentiable in u."""
    rows, weights = grid_rows_and_weights(u, resolutions, log2_hashmap_size)  # [N, L, C] each
    rows = rows + torch.tensor(offsets[:-1], device=u.device)[:, None]
    # index_select's backward is index_add_ (atomic adds on CUDA), faster than indexing's sort-based one.
    values = embeddings.index_select(0, rows.reshape(-1)).view(*rows.shape, embeddings.shape[-1])  # [N, L, C, F]
    return (weights[..., None] * values).sum(2).flatten(1)  # level-major


@dataclasses.dataclass(frozen=True)
class LevelGroup:
    """Consecutive levels that are all dense or all hashed, as tensors for the vectorised corner loop."""

    hashed: bool
    levels: slice  # the group's positions among all levels
    scale: Tensor  # [G] float32: R - 1, the grid coordinate of u = 1
    top: Tensor  # [G] int: R - 1, the last vertex on each axis
    multipliers: Tensor  # [D, G] int: row step per unit along each axis (R^d dense; prime mod 2^log2 hashed)
    first_row: int  # row of `embeddings` where the group's first level starts
    level_rows: Tensor  # [G] int: where each level starts, from first_row (multiples of 2^log2 when hashed)


def row_dtype(offsets: list[int], resolutions: list[int], log2_hashmap_size: int) -> torch.dtype:
    """int32 when every row and every intermediate product fits it, else int64.

    Hashed terms are (c * prime) mod 2^log2 computed as c * (prime mod 2^log2): below (R - 1) * (2^log2 - 1).
    Dense terms stay below R^D <= 2^log2, and rows below offsets[-1].
    """
    largest = max(offsets[-1], (max(resolutions) - 1) * (2**log2_hashmap_size - 1))
    return torch.int32 if largest < 2**31 else torch.int64


@functools.lru_cache(maxsize=64)
def level_groups(
    resolutions: tuple[int, ...], offsets: tuple[int, ...], input_dim: int, log2_hashmap_size: int,
    device: torch.device,
) -> tuple[LevelGroup, ...]:
    """The dense prefix and the hashed rest of the levels (cached: built once per grid layout and device)."""
    if list(resolutions) != sorted(resolutions):
        raise ErnerfError(f"hash-grid resolutions must grow level by level, got {list(resolutions)}")
    dtype = row_dtype(list(offsets), list(resolutions), log2_hashmap_size)
    table_size = 2**log2_hashmap_size
    groups, start = [], 0
    for hashed in (False, True):
        group = [r for r in resolutions if (r**input_dim > table_size) == hashed]
        if not group:
            continue
        levels = slice(start, start + len(group))
        start += len(group)
        mult = [[HASH_PRIMES[d] % table_size if hashed else r**d for r in group] for d in range(input_dim)]
        groups.append(LevelGroup(
            hashed=hashed,
            levels=levels,
            scale=torch.tensor([r - 1 for r in group], dtype=torch.float32, device=device),
            top=torch.tensor([r - 1 for r in group], dtype=dtype, device=device),
            multipliers=torch.tensor(mult, dtype=dtype, device=device),
            first_row=offsets[levels.start],
            level_rows=torch.tensor([o - offsets[levels.start] for o in offsets[levels]], dtype=dtype, device=device),
        ))
    return tuple(groups)


def group_rows_and_weights(
    u_t: Tensor, group: LevelGroup, log2_hashmap_size: int
) -> tuple[Tensor, Tensor]:  # [D, n] -> rows [G, 2^D, n] (from group.first_row), weights [G, 2^D, n]
    """Rows of the 2^D corners around each point on a group of levels, and their D-linear weights.

    Corners are built one axis at a time (dimension 0 varies slowest) from that axis' low and high vertex, the
    weights as the left-to-right product of the axes' (1 - frac, frac), as `grid_rows_and_weights` builds them.
    Points are the innermost dimension so that every operation runs over long contiguous rows, and the axes are
    handled together until corners combine them (fewer, larger operations).
    """
    p = group.scale[:, None] * u_t[:, None]  # [D, G, n]
    low = p.floor()
    frac = p.sub_(low)
    low = low.to(group.top.dtype)  # p >= 0: exact, and floor == truncation
    high = torch.minimum(low + 1, group.top[:, None])
    axis_rows = torch.stack([low, high], 2) * group.multipliers[:, :, None, None]  # [D, G, 2, n]
    if group.hashed:  # (a ^ b) mod 2^k == (a mod 2^k) ^ (b mod 2^k): each term masked, no uint32 step needed
        axis_rows &= 2**log2_hashmap_size - 1
    # Each level's start, added to axis 0's terms only: the other axes' terms are below 2^k, so neither their sum
    # (dense) nor their xor (hashed, where the starts are multiples of 2^k) reaches into it.
    axis_rows[0] += group.level_rows[:, None, None]
    axis_weights = torch.stack([1 - frac, frac], 2)  # [D, G, 2, n]
    rows, weights = axis_rows[0], axis_weights[0]
    for d in range(1, u_t.shape[0]):
        low_rows, new_rows = rows[:, :, None], axis_rows[d, :, None]
        combined = low_rows ^ new_rows if group.hashed else low_rows + new_rows
        rows = combined.flatten(1, 2)
        weights = (weights[:, :, None] * axis_weights[d, :, None]).flatten(1, 2)
    return rows, weights


# Points interpolated at a time on the CPU: every temporary of a chunk stays in the core's cache.
CPU_CHUNK_POINTS = 4096


def gather_rows(embeddings: Tensor, rows: Tensor) -> Tensor:  # [T, F], [M] -> [M, F]
    """embeddings[rows], read through a 1-D view where possible (index_select on a [T, F] table is far slower).

    Rows of two float32 features move as one 8-byte word: a bit copy, the values are untouched.
    """
    num_features = embeddings.shape[-1]
    if num_features == 1:
        return embeddings.view(-1).index_select(0, rows)[:, None]
    if num_features * embeddings.element_size() == 8 and embeddings.is_contiguous():
        return embeddings.view(torch.int64).view(-1).index_select(0, rows).view(embeddings.dtype).view(-1, num_features)
    return embeddings.index_select(0, rows)


def points_first(t: Tensor) -> Tensor:  # [G, C, n, ...] -> [n, G, C, ...]
    """The reference's point-major layout, copied as a 2-D transpose of each corner's 4- or 8-byte word.

    torch copies 2-D transposes in cache-sized blocks, several times faster than a general permute; a bit copy.
    """
    levels, corners, points = t.shape[:3]
    word = {4: torch.int32, 8: torch.int64}.get(t[0, 0, 0].numel() * t.element_size())
    if word is None or not t.is_contiguous():
        return t.permute(2, 0, 1, *range(3, t.dim())).contiguous()
    words = t.view(word).view(levels * corners, points).t().contiguous()  # [n, G * C]
    return words.view(t.dtype).view(points, levels, corners, *t.shape[3:])


def sum_corners(products: Tensor) -> Tensor:  # [G, C, n, F] -> [n, G, F]
    """Sum over the corners in the reference's order: its own reduction, on its [n, G, C, F] layout.

    The transposition costs a copy, but the order in which torch's CPU sum adds the corners depends on the layout
    and on the CPU's vector width (not always left to right), so summing corner by corner could change the bits.
    """
    return points_first(products).sum(2)


def group_point_grad(
    u_t: Tensor, group: LevelGroup, rows: Tensor, grad: Tensor, embeddings: Tensor
) -> Tensor:  # [D, n], rows [G, C, n], grad [G, n, F] -> [n, D]
    """Gradient of a group's interpolated features with respect to the points, as autograd takes it on the reference.

    Every step is the reference's backward in its order: the weight gradient sums the features' products as torch's
    sum over their contiguous last dimension does, `frac_grads` unwinds the weights' product chain, and the levels
    are summed by torch's sum over the reference's [n, G, D] layout (its order depends on that layout, so the terms
    are transposed into it first). The fractions are rebuilt from u exactly as the forward built them, so that only
    the rows had to be kept.
    """
    levels, corners, points = rows.shape
    values = gather_rows(embeddings[group.first_row :], rows.view(-1)).view(levels, corners, points, -1)
    products = values.mul_(grad[:, None])  # [G, C, n, F]
    if products.shape[-1] <= 2:  # one or two terms add up the same in any order, and faster than a short sum
        weight_grad = products[..., 0] if products.shape[-1] == 1 else products[..., 0] + products[..., 1]
    else:
        weight_grad = products.sum(-1)  # [G, C, n]
    p = group.scale[:, None] * u_t[:, None]  # [D, G, n]
    frac_grad = frac_grads(weight_grad, p.sub_(p.floor()))  # [G, D, n]
    level_terms = points_first((frac_grad * group.scale[:, None, None])[:, :, :, None]).view(points, levels, -1)
    return level_terms.sum(1, keepdim=True)[:, 0]  # [n, D]


def frac_grads(weight_grad: Tensor, frac: Tensor) -> Tensor:  # [G, 2^D, n], [D, G, n] -> [G, D, n]
    """Gradient of the fractions from that of the corner weights, the backward of their left-to-right product.

    Weights were built as w_d = w_(d-1) x (1 - frac_d, frac_d), one axis at a time; this takes the axes back from the
    last, each factor's gradient summing over the earlier corners left to right (torch's order for so few terms),
    and frac_d's gradient is then (high factor's) - (low factor's), as rsub's and stack's backward give it.
    """
    num_axes, levels, points = frac.shape
    axis_weights = torch.stack([1 - frac, frac], 2)  # [D, G, 2, n]
    partials = [axis_weights[0]]  # weights of the corners over the first d + 1 axes: [G, 2^(d+1), n]
    for d in range(1, num_axes - 1):
        partials.append((partials[-1][:, :, None] * axis_weights[d, :, None]).flatten(1, 2))
    factor_grads = [weight_grad] * num_axes  # [G, 2, n] per axis: of (1 - frac_d, frac_d)
    for d in range(num_axes - 1, 0, -1):
        pairs = weight_grad.view(levels, -1, 2, points)  # [G, C', 2, n]: earlier corners x this axis' low/high
        terms = pairs * partials[d - 1][:, :, None]
        factor_grad = terms[:, 0]
        for corner in range(1, terms.shape[1]):
            factor_grad = factor_grad + terms[:, corner]
        factor_grads[d] = factor_grad
        weight_grad = pairs[:, :, 0] * axis_weights[d, :, None, 0] + pairs[:, :, 1] * axis_weights[d, :, None, 1]
    factor_grads[0] = weight_grad
    return torch.stack([g[:, 1] - g[:, 0] for g in factor_grads], 1)


class _CpuGridInterpolation(torch.autograd.Function):
    """Interpolation over chunks of points, with the gradients of the embeddings (by index_add_) and of u.

    Per chunk it does what the reference does on all points (same products, same sum over corners), so outputs
    match bit for bit; the backward adds each corner's weighted gradient in the reference's order, and takes u's
    gradient by the reference's backward operations (`group_point_grad`). That gradient is not itself
    differentiable: asking for it with create_graph=True raises (the embedding gradient's graph, linear in the
    upstream gradient, is still built).
    """

    @staticmethod
    def forward(ctx, u: Tensor, embeddings: Tensor, groups: tuple[LevelGroup, ...], log2_hashmap_size: int) -> Tensor:
        num_points, num_features = u.shape[0], embeddings.shape[-1]
        out = u.new_empty(num_points, groups[-1].levels.stop, num_features)  # [N, L, F]
        keep_rows = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        saved = [] if keep_rows else None  # per chunk and group: rows, and weights where the table needs them
        for start in range(0, num_points, CPU_CHUNK_POINTS):
            chunk = u[start : start + CPU_CHUNK_POINTS].t().contiguous()  # [D, n]
            for group in groups:
                rows, weights = group_rows_and_weights(chunk, group, log2_hashmap_size)  # [G, C, n] each
                values = gather_rows(embeddings[group.first_row :], rows.view(-1))
                values = values.view(*rows.shape, num_features)  # [G, C, n, F]
                out[start : start + CPU_CHUNK_POINTS, group.levels] = sum_corners(values.mul_(weights[..., None]))
                if saved is not None:
                    saved.append((rows, weights if ctx.needs_input_grad[1] else None))
        if saved is not None:
            ctx.chunks = saved
            ctx.groups = groups
            ctx.table_shape = embeddings.shape
            # The points' gradient reads u and the table again (saved, so that changing either in place is caught).
            ctx.save_for_backward(*((u, embeddings) if ctx.needs_input_grad[0] else ()))
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        if not (ctx.needs_input_grad[0] or ctx.needs_input_grad[1]):
            return None, None, None, None
        if ctx.needs_input_grad[0] and torch.is_grad_enabled():  # create_graph: the graph would silently lack u
            raise RuntimeError(
                "the hash grid's CPU path has no double backward with respect to the points (create_graph=True); "
                "hashgrid_reference has one"
            )
        u, embeddings = ctx.saved_tensors or (None, None)
        grad_table = grad_out.new_zeros(ctx.table_shape) if ctx.needs_input_grad[1] else None  # [T, F]
        grad_u = torch.empty_like(u) if ctx.needs_input_grad[0] else None
        chunks = iter(ctx.chunks)
        for start in range(0, grad_out.shape[0], CPU_CHUNK_POINTS):
            chunk = slice(start, start + CPU_CHUNK_POINTS)
            u_t = u[chunk].t().contiguous() if grad_u is not None else None  # [D, n]
            for group in ctx.groups:
                rows, weights = next(chunks)  # [G, C, n] each
                grad = grad_out[chunk, group.levels]  # [n, G, F]
                if grad_table is not None:
                    add_table_grad(grad_table[group.first_row :], rows, weights, grad)
                if grad_u is not None:  # the groups' gradients add up as the reference's two uses of u do
                    group_grad = group_point_grad(u_t, group, rows, grad.permute(1, 0, 2).contiguous(), embeddings)
                    grad_u[chunk] = group_grad if group.levels.start == 0 else grad_u[chunk] + group_grad
        return grad_u, grad_table, None, None


def add_table_grad(
    grad_table: Tensor, rows: Tensor, weights: Tensor, grad: Tensor
) -> None:  # [T, F], rows and weights [G, C, n], grad [n, G, F]
    """Add a group's weighted gradients into the table's rows, in the reference's [n, G, C] order.

    Added in that order, each entry sums its terms in the same sequence as the reference's index_add_. One feature
    at a time, into that feature's column (a strided 1-D view): index_add_ of single values is much faster than of
    [F] rows, and unlike a [F, T] buffer the columns need no transposing copy of the whole table afterwards, a cost
    that does not shrink with the points.
    """
    rows = points_first(rows).view(-1)
    grad = grad.permute(2, 1, 0).contiguous()  # [F, G, n]
    for feature, feature_grad in enumerate(grad):
        grads = points_first(weights * feature_grad[:, None]).view(-1)
        grad_table[:, feature].index_add_(0, rows, grads)


def _tcnn_module():
    """Import tinycudann or explain that it is optional."""
    try:
        import tinycudann
    except ImportError as err:
        raise ErnerfError(
            "encoder backend 'tcnn' needs tiny-cuda-nn, which is optional and not installed. Install it with "
            "`pip install git+https://github.com/NVlabs/tiny-cuda-nn/#subdirectory=bindings/torch` on a CUDA "
            "machine, or use the pure-PyTorch backend (`encoder.backend=torch`)."
        ) from err
    return tinycudann


@functools.cache
def triton_available() -> bool:
    """Whether the Triton kernels import (a CUDA build of PyTorch with triton)."""
    try:
        import ernerf.encoders.triton_hashgrid  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def _triton_function():
    """Import the Triton kernel lazily (it needs a GPU build of Triton)."""
    try:
        from ernerf.encoders.triton_hashgrid import hashgrid_triton
    except ImportError as err:
        raise ErnerfError(
            f"encoder backend 'triton' could not be loaded ({err}). It needs CUDA and the `triton` package; "
            "use `encoder.backend=torch` on machines without them."
        ) from err
    return hashgrid_triton


class HashGridEncoder(nn.Module):
    """Multi-resolution hash grid over [-bound, bound]^D; `backend` picks torch, tcnn or triton."""

    def __init__(
        self,
        input_dim: int,
        num_levels: int = 12,
        level_dim: int = 1,
        base_resolution: int = 64,
        desired_resolution: int = 512,
        log2_hashmap_size: int = 14,
        bound: float = 1.0,
        backend: str = "torch",
    ) -> None:
        super().__init__()
        if backend not in BACKENDS:
            raise ErnerfError(f"unknown hash-grid backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        if desired_resolution < base_resolution:
            raise ErnerfError(
                f"desired_resolution ({desired_resolution}) must be at least base_resolution ({base_resolution})"
            )
        if input_dim > len(HASH_PRIMES):
            raise ErnerfError(f"hash grids support up to {len(HASH_PRIMES)} input dims, got input_dim={input_dim}")
        self.input_dim = input_dim
        self.num_levels = num_levels
        self.level_dim = level_dim
        self.log2_hashmap_size = log2_hashmap_size
        self.bound = bound
        self.backend = backend
        self.output_dim = num_levels * level_dim
        self.resolutions = level_resolutions(num_levels, base_resolution, desired_resolution)
        self.offsets = level_offsets(self.resolutions, input_dim, log2_hashmap_size)
        if backend == "tcnn":
            self.tcnn = self._build_tcnn(base_resolution)
        else:
            self.embeddings = nn.Parameter(torch.empty(self.offsets[-1], level_dim).uniform_(-1e-4, 1e-4))
        self._triton = _triton_function() if backend == "triton" else None

    def _build_tcnn(self, base_resolution: int) -> nn.Module:
        """tiny-cuda-nn encoding with the same levels (its own parameter layout)."""
        growth = (self.resolutions[-1] / base_resolution) ** (1 / max(self.num_levels - 1, 1))
        config = {
            "otype": "HashGrid",
            "n_levels": self.num_levels,
            "n_features_per_level": self.level_dim,
            "log2_hashmap_size": self.log2_hashmap_size,
            "base_resolution": base_resolution,
            "per_level_scale": growth,
            "interpolation": "Linear",
        }
        return _tcnn_module().Encoding(self.input_dim, config, dtype=torch.float32)

    def forward(self, x: Tensor) -> Tensor:  # [N, D] -> [N, L * F]
        """Encode points given in [-bound, bound]^D."""
        if x.shape[-1] != self.input_dim:
            raise ErnerfError(f"hash grid expects {self.input_dim}-d points, got shape {tuple(x.shape)}")
        if self.backend == "tcnn":
            u = ((x + self.bound) / (2 * self.bound)).clamp(0.0, 1.0)
            return self.tcnn(u).float()
        args = (x, self.embeddings, self.offsets, self.resolutions, self.log2_hashmap_size, self.bound)
        if self.uses_triton(x):
            return (self._triton or _triton_function())(*args)
        return hashgrid_torch(*args)

    def uses_triton(self, x: Tensor) -> bool:
        """Whether points `x` are encoded by the Triton kernels (backend triton, or auto on CUDA tensors)."""
        return self.backend == "triton" or (self.backend == "auto" and x.is_cuda and triton_available())

    def extra_repr(self) -> str:
        """Summary shown by print(module)."""
        return (
            f"input_dim={self.input_dim}, levels={self.num_levels}x{self.level_dim}, "
            f"resolutions={self.resolutions[0]}..{self.resolutions[-1]}, log2_T={self.log2_hashmap_size}, "
            f"backend={self.backend}"
        )
