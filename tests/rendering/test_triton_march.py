"""The Triton marching kernel against the PyTorch occupancy test (interpreter on CPU, parity on CUDA).

Like the hash-grid kernels, the interpreter tests need TRITON_INTERPRET=1 before triton is first imported:
    TRITON_INTERPRET=1 python -m pytest tests/rendering/test_triton_march.py
(tests/test_triton_interpreter.py runs them so in the default suite).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from ernerf.rendering import OccupancyGrid, intersect_aabb  # noqa: E402
from ernerf.rendering import triton_march  # noqa: E402
from ernerf.rendering.marcher import RayMarcher  # noqa: E402
from tests.triton_interpreter import interpreter_only  # noqa: E402

cpu_interpreter = interpreter_only(triton_march._occupied_samples_kernel)


def _scene(device: str, rays: int, samples: int, resolution: int, seed: int):
    """A grid with random occupied cells over a non-cube box, rays from outside it, and their sample distances."""
    g = torch.Generator().manual_seed(seed)
    aabb = (-0.9, -0.6, -1.1, 0.7, 0.8, 0.5)
    grid = OccupancyGrid(aabb, resolution=resolution).to(device)
    grid.occupancy.copy_((torch.rand(resolution**3, generator=g) < 0.3).to(device))
    rays_o = (torch.rand(rays, 3, generator=g) * 2 - 1).to(device) * 0.3 + torch.tensor([0.0, 0.0, -3.0], device=device)
    rays_d = torch.nn.functional.normalize(torch.randn(rays, 3, generator=g) * 0.2 + torch.tensor([0.0, 0.0, 1.0]), dim=-1)
    rays_d = rays_d.to(device)
    rays_d[:8] = torch.tensor([1.0, 0.0, 0.0], device=device)  # rays that miss the box
    near, far, hit = intersect_aabb(rays_o, rays_d, grid.aabb, 0.05)
    t = near[:, None] + (torch.arange(samples, device=device) + torch.rand(rays, samples, generator=g).to(device)) * (
        (far - near) / samples)[:, None]
    # Some samples exactly on cell faces along z (the rounding of the division decides their cell).
    faces = grid.aabb[2] + (grid.aabb[5] - grid.aabb[2]) * torch.arange(1, 5, device=device) / resolution
    t[8:12, :4] = ((faces - rays_o[8:12, 2:3]) / rays_d[8:12, 2:3]).to(t)
    t[12:40, -4:] = far[12:40, None] + 0.3 * torch.arange(1, 5, device=device)  # past the box: never kept
    return grid, rays_o, rays_d, t, hit


def _reference(grid: OccupancyGrid, rays_o, rays_d, t, hit) -> torch.Tensor:
    x = rays_o[:, None] + t[..., None] * rays_d[:, None]
    return hit[:, None] & grid.occupied(x.reshape(-1, 3)).view_as(t)


def _check(device: str, rays: int, samples: int, resolution: int, seed: int) -> None:
    grid, rays_o, rays_d, t, hit = _scene(device, rays, samples, resolution, seed)
    fast = triton_march.occupied_samples_triton(rays_o, rays_d, t, hit, grid.aabb, grid.occupancy, resolution)
    ref = _reference(grid, rays_o, rays_d, t, hit)
    assert fast.dtype == torch.bool and fast.shape == t.shape
    assert 0 < int(ref.sum()) < ref.numel()  # a test with every sample kept (or none) would prove little
    assert torch.equal(fast, ref)
    assert not fast[:8].any()  # missed rays keep nothing


@cpu_interpreter
def test_interpreter_matches_the_pytorch_occupancy_test() -> None:
    _check("cpu", rays=300, samples=16, resolution=16, seed=0)
    _check("cpu", rays=77, samples=5, resolution=8, seed=1)  # a tail block, odd sample count


@pytest.mark.gpu
def test_cuda_parity_at_model_sizes() -> None:
    _check("cuda", rays=65536, samples=16, resolution=128, seed=2)


@pytest.mark.gpu
def test_marcher_renders_equal_with_the_kernel_and_without() -> None:
    """The marcher through the kernel (CUDA) equals the marcher through the PyTorch test (grid on the CPU)."""
    grid, rays_o, rays_d, _, _ = _scene("cuda", 4096, 16, 64, seed=3)

    def field(x, d):
        from ernerf.fields import FieldOutputs

        return FieldOutputs(sigma=(x.norm(dim=-1) < 0.6).float() * 20, rgb=(x * 0.5 + 0.5).clamp(0, 1))

    marcher = RayMarcher(16, perturb=False).eval()
    gpu = marcher(rays_o, rays_d, field, grid.aabb, grid, (1.0, 1.0, 1.0))
    cpu = marcher(rays_o.cpu(), rays_d.cpu(), field, grid.aabb.cpu(), grid.cpu(), (1.0, 1.0, 1.0))
    torch.testing.assert_close(gpu.rgb.cpu(), cpu.rgb, rtol=1e-5, atol=1e-5)
    assert gpu.samples_evaluated == cpu.samples_evaluated
