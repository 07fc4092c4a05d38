"""Multi-resolution hash grid (Instant-NGP) with swappable backends sharing one parameter layout.

The layout (level resolutions, offsets, dense/hashed indexing, interpolation) is specified in
docs/design/model_api.md; `hashgrid_torch` is the reference every fast backend is tested against.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ernerf.errors import ErnerfError

# Per-dimension hash primes (dimension 0 uses 1, as in Instant-NGP), applied in uint32 arithmetic.
HASH_PRIMES = (1, 2654435761, 805459861)
BACKENDS = ("torch", "tcnn", "triton")
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


def _axis_terms(c: Tensor, d: int, resolution: int, hashed: bool) -> Tensor:  # [N, 2] -> [N, 2]
    """Dimension d's contribution to the row of the low/high corner: c * R^d (dense) or c * prime (hashed)."""
    if hashed:
        return (c * HASH_PRIMES[d]) & _UINT32_MASK
    return c * resolution**d


def level_rows_and_weights(
    u: Tensor, resolution: int, log2_hashmap_size: int
) -> tuple[Tensor, Tensor]:  # [N, D] in [0, 1] -> rows [N, 2^D], weights [N, 2^D]
    """Rows (within the level) of the 2^D corners around each point, and their D-linear weights.

    Built one dimension at a time from [N, 2] low/high terms, so no [N, 2^D, D] tensor is formed;
    it computes exactly `corner_index` of each corner.
    """
    input_dim = u.shape[-1]
    hashed = resolution**input_dim > 2**log2_hashmap_size
    p = u * (resolution - 1)
    low = p.floor()
    frac = p - low
    low = low.long()
    rows = torch.zeros_like(low[:, :1])  # [N, 1]
    weights = torch.ones_like(frac[:, :1])  # [N, 1]
    for d in range(input_dim):
        c = torch.stack([low[:, d], (low[:, d] + 1).clamp(max=resolution - 1)], -1)  # [N, 2]
        terms = _axis_terms(c, d, resolution, hashed)
        combined = rows[:, :, None] ^ terms[:, None] if hashed else rows[:, :, None] + terms[:, None]
        rows = combined.flatten(1)
        weights = (weights[:, :, None] * torch.stack([1 - frac[:, d], frac[:, d]], -1)[:, None]).flatten(1)
    if hashed:
        rows = rows & (2**log2_hashmap_size - 1)
    return rows, weights


def hashgrid_torch(
    x: Tensor,  # [N, D] in [-bound, bound]
    embeddings: Tensor,  # [offsets[-1], F]
    offsets: list[int],  # [L + 1]
    resolutions: list[int],  # [L]
    log2_hashmap_size: int,
    bound: float = 1.0,
) -> Tensor:  # [N, L * F]
    """Pure-PyTorch reference: all 2^D corners of all points gathered at once, one level at a time."""
    u = ((x.float() + bound) / (2 * bound)).clamp(0.0, 1.0)  # [N, D]
    features = []
    for level, resolution in enumerate(resolutions):
        rows, weights = level_rows_and_weights(u, resolution, log2_hashmap_size)  # [N, C] each
        # index_select's backward is index_add_ (atomic adds on CUDA), faster than indexing's sort-based one.
        values = embeddings.index_select(0, (rows + offsets[level]).reshape(-1)).view(*rows.shape, -1)  # [N, C, F]
        features.append((weights[..., None] * values).sum(1))
    return torch.cat(features, dim=-1)


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
        if self._triton is not None:
            return self._triton(*args)
        return hashgrid_torch(*args)

    def extra_repr(self) -> str:
        """Summary shown by print(module)."""
        return (
            f"input_dim={self.input_dim}, levels={self.num_levels}x{self.level_dim}, "
            f"resolutions={self.resolutions[0]}..{self.resolutions[-1]}, log2_T={self.log2_hashmap_size}, "
            f"backend={self.backend}"
        )
