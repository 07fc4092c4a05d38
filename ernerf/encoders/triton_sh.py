"""Real spherical harmonics of directions in one Triton kernel (forward only: directions take no gradient).

The PyTorch encoder (`SphericalHarmonicsEncoder`) spends ~40 elementwise launches on strided [M] columns and a
stack into [M, 16]; at a 512x512 frame's ~770k samples that was ~0.5 ms of an H100's time per frame. The kernel
reads each direction once and writes its row of basis values. Same formulas and constants as the reference, in
fp32, without FMA contraction. Without CUDA the kernel runs only under Triton's interpreter (TRITON_INTERPRET=1).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ernerf.encoders.frequency import _C0, _C1, _C2, _C3
from ernerf.triton_device import require_kernel_device

_BLOCK = 256


@triton.jit
def _sh_kernel(d_ptr, out_ptr, n, stride_d, DEGREE: tl.constexpr, BLOCK: tl.constexpr,
               C0: tl.constexpr, C1: tl.constexpr,
               C20: tl.constexpr, C21: tl.constexpr, C22: tl.constexpr, C23: tl.constexpr, C24: tl.constexpr,
               C30: tl.constexpr, C31: tl.constexpr, C32: tl.constexpr, C33: tl.constexpr, C34: tl.constexpr,
               C35: tl.constexpr, C36: tl.constexpr):
    """out[m, :DEGREE^2] = real SH bands 0..DEGREE-1 of d[m] / |d[m]|."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = rows < n
    x = tl.load(d_ptr + rows * stride_d, mask=ok, other=1.0).to(tl.float32)
    y = tl.load(d_ptr + rows * stride_d + 1, mask=ok, other=0.0).to(tl.float32)
    z = tl.load(d_ptr + rows * stride_d + 2, mask=ok, other=0.0).to(tl.float32)
    norm = tl.maximum(tl.sqrt_rn(x * x + y * y + z * z), 1e-12)
    x, y, z = tl.math.div_rn(x, norm), tl.math.div_rn(y, norm), tl.math.div_rn(z, norm)
    out = out_ptr + rows * (DEGREE * DEGREE)
    tl.store(out, tl.zeros([BLOCK], dtype=tl.float32) + C0, mask=ok)
    if DEGREE > 1:
        tl.store(out + 1, -C1 * y, mask=ok)
        tl.store(out + 2, C1 * z, mask=ok)
        tl.store(out + 3, -C1 * x, mask=ok)
    xx, yy, zz = x * x, y * y, z * z
    if DEGREE > 2:
        tl.store(out + 4, C20 * x * y, mask=ok)
        tl.store(out + 5, C21 * y * z, mask=ok)
        tl.store(out + 6, C22 * (2 * zz - xx - yy), mask=ok)
        tl.store(out + 7, C23 * x * z, mask=ok)
        tl.store(out + 8, C24 * (xx - yy), mask=ok)
    if DEGREE > 3:
        tl.store(out + 9, C30 * y * (3 * xx - yy), mask=ok)
        tl.store(out + 10, C31 * x * y * z, mask=ok)
        tl.store(out + 11, C32 * y * (4 * zz - xx - yy), mask=ok)
        tl.store(out + 12, C33 * z * (2 * zz - 3 * xx - 3 * yy), mask=ok)
        tl.store(out + 13, C34 * x * (4 * zz - xx - yy), mask=ok)
        tl.store(out + 14, C35 * z * (xx - yy), mask=ok)
        tl.store(out + 15, C36 * x * (xx - 3 * yy), mask=ok)


def spherical_harmonics_triton(d: Tensor, degree: int) -> Tensor:  # [M, 3] -> [M, degree**2] float32
    """`SphericalHarmonicsEncoder(degree)(d)` in one launch (no gradient to d)."""
    require_kernel_device(d, "SH kernel", "use SphericalHarmonicsEncoder (what the encoder does there)")
    if d.ndim != 2 or d.shape[1] != 3 or not 1 <= degree <= 4:
        raise ValueError(f"SH of directions [M, 3] at degree 1..4, got {tuple(d.shape)} and degree {degree}")
    d = d if d.stride(-1) == 1 else d.contiguous()
    out = torch.empty(d.shape[0], degree * degree, dtype=torch.float32, device=d.device)
    if d.shape[0]:
        _sh_kernel[(triton.cdiv(d.shape[0], _BLOCK),)](
            d, out, d.shape[0], d.stride(0), DEGREE=degree, BLOCK=_BLOCK, C0=_C0, C1=_C1,
            C20=_C2[0], C21=_C2[1], C22=_C2[2], C23=_C2[3], C24=_C2[4],
            C30=_C3[0], C31=_C3[1], C32=_C3[2], C33=_C3[3], C34=_C3[4], C35=_C3[5], C36=_C3[6],
            num_warps=4, enable_fp_fusion=False,
        )
    return out
