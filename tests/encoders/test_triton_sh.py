"""The Triton spherical-harmonics kernel against the PyTorch encoder (interpreter on CPU, parity on CUDA).

Interpreter tests need TRITON_INTERPRET=1 before triton is first imported (tests/test_triton_interpreter.py runs
this module so):  TRITON_INTERPRET=1 python -m pytest tests/encoders/test_triton_sh.py
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from ernerf.encoders import SphericalHarmonicsEncoder  # noqa: E402
from ernerf.encoders import triton_sh  # noqa: E402
from tests.triton_interpreter import interpreter_only  # noqa: E402

cpu_interpreter = interpreter_only(triton_sh._sh_kernel)


def _directions(n: int, device: str) -> torch.Tensor:
    d = torch.randn(n, 3, generator=torch.Generator().manual_seed(n)) * torch.rand(n, 1, generator=torch.Generator().manual_seed(1)) * 3
    d[:3] = torch.tensor([[0.0, 0.0, 2.0], [-1.0, 0.0, 0.0], [0.0, 1e-3, 0.0]])  # axes, a short vector
    return d.to(device)


@cpu_interpreter
@pytest.mark.parametrize("degree", [1, 2, 3, 4])
def test_interpreter_matches_the_pytorch_encoder(degree: int) -> None:
    d = _directions(300, "cpu")
    torch.testing.assert_close(triton_sh.spherical_harmonics_triton(d, degree),
                               SphericalHarmonicsEncoder(degree)(d), rtol=1e-5, atol=1e-6)
    strided = torch.cat([d, d], -1)[:, 1:4]  # a non-contiguous view: another row stride
    torch.testing.assert_close(triton_sh.spherical_harmonics_triton(strided, degree),
                               SphericalHarmonicsEncoder(degree)(strided), rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
def test_cuda_encoder_uses_the_kernel_and_matches_the_reference() -> None:
    d = _directions(2**18 + 5, "cuda")
    encoder = SphericalHarmonicsEncoder(4)
    fast = encoder(d)  # the kernel path
    ref = encoder(d.requires_grad_())  # a direction that takes gradients goes the PyTorch way
    assert ref.requires_grad and not fast.requires_grad
    torch.testing.assert_close(fast, ref.detach(), rtol=1e-5, atol=1e-6)
