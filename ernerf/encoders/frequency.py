"""Fixed encoders: sinusoidal positional encoding and real spherical harmonics for directions."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ernerf.encoders.hashgrid import triton_available
from ernerf.errors import ErnerfError

# Real spherical-harmonic normalisation constants, bands l = 1..3 (band 0 is 1 / (2 sqrt(pi))).
_C0 = 0.28209479177387814
_C1 = 0.4886025119029199
_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
_C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)


class FrequencyEncoder(nn.Module):
    """NeRF positional encoding: [x, sin(2^k x), cos(2^k x)] for k = 0..num_freqs-1."""

    def __init__(self, input_dim: int, num_freqs: int, include_input: bool = True) -> None:
        super().__init__()
        self.input_dim = input_dim
        self.include_input = include_input
        self.register_buffer("freqs", 2.0 ** torch.arange(num_freqs, dtype=torch.float32), persistent=False)
        self.output_dim = input_dim * (int(include_input) + 2 * num_freqs)

    def forward(self, x: Tensor) -> Tensor:  # [N, D] -> [N, output_dim]
        """Encode x; the output is [x, sin of every frequency, cos of every frequency]."""
        scaled = (x[..., None, :] * self.freqs[:, None]).flatten(-2)  # [N, K * D]
        parts = [x] if self.include_input else []
        return torch.cat([*parts, torch.sin(scaled), torch.cos(scaled)], dim=-1)


def _sh_bands(x: Tensor, y: Tensor, z: Tensor) -> list[list[Tensor]]:
    """Real SH basis functions grouped by band l = 0..3 for unit vectors (x, y, z)."""
    xx, yy, zz = x * x, y * y, z * z
    return [
        [torch.full_like(x, _C0)],
        [-_C1 * y, _C1 * z, -_C1 * x],
        [_C2[0] * x * y, _C2[1] * y * z, _C2[2] * (2 * zz - xx - yy), _C2[3] * x * z, _C2[4] * (xx - yy)],
        [
            _C3[0] * y * (3 * xx - yy),
            _C3[1] * x * y * z,
            _C3[2] * y * (4 * zz - xx - yy),
            _C3[3] * z * (2 * zz - 3 * xx - 3 * yy),
            _C3[4] * x * (4 * zz - xx - yy),
            _C3[5] * z * (xx - yy),
            _C3[6] * x * (xx - 3 * yy),
        ],
    ]


class SphericalHarmonicsEncoder(nn.Module):
    """Real spherical harmonics of view directions, `degree` bands (degree**2 outputs, orthonormal)."""

    def __init__(self, degree: int = 4) -> None:
        super().__init__()
        if not 1 <= degree <= 4:
            raise ErnerfError(f"SphericalHarmonicsEncoder supports degree 1..4, got {degree}")
        self.degree = degree
        self.output_dim = degree**2

    def forward(self, d: Tensor) -> Tensor:  # [N, 3] -> [N, degree**2]
        """Encode directions; they are normalised first, so any non-zero length works. On CUDA (directions that
        take no gradient, as the marcher's) one Triton kernel (ernerf/encoders/triton_sh.py), except under
        torch.compile, which fuses the formulas into its own kernels (and would break its graph at the launch)."""
        if (d.is_cuda and d.ndim == 2 and not (d.requires_grad and torch.is_grad_enabled())
                and not torch.compiler.is_compiling() and triton_available()):
            from ernerf.encoders.triton_sh import spherical_harmonics_triton

            return spherical_harmonics_triton(d, self.degree)
        d = d / d.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        bands = _sh_bands(d[..., 0], d[..., 1], d[..., 2])[: self.degree]
        return torch.stack([basis for band in bands for basis in band], dim=-1)
