"""Triton hash-grid kernels against the pure-PyTorch reference (interpreter on CPU, parity on CUDA)."""

from __future__ import annotations

import pytest
import torch

# The CPU interpreter must be chosen before the first `import triton` of the process (kernels bind to it when
# decorated), which a test module cannot guarantee inside a whole suite: run the interpreter tests on their own,
#   TRITON_INTERPRET=1 python -m pytest tests/encoders/test_triton_hashgrid.py
pytest.importorskip("triton")

from ernerf.encoders import triton_hashgrid  # noqa: E402
from ernerf.encoders.hashgrid import hashgrid_torch, level_offsets, level_resolutions  # noqa: E402
from ernerf.encoders.triton_hashgrid import TRIPLANE_DIMS, hashgrid_triton, triplane_triton  # noqa: E402
from ernerf.errors import ErnerfError  # noqa: E402
from tests.triton_interpreter import interpreter_only  # noqa: E402

cpu_interpreter = interpreter_only(triton_hashgrid._hashgrid_fwd_kernel)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _grid(dim: int, levels: int, base: int, top: int, log2: int, level_dim: int, dtype=torch.float32):
    """Random embeddings and the layout (offsets, resolutions) of one grid."""
    resolutions = level_resolutions(levels, base, top)
    offsets = level_offsets(resolutions, dim, log2)
    emb = (torch.rand(offsets[-1], level_dim, device=DEVICE) * 2 - 1).to(dtype).requires_grad_()
    return emb, offsets, resolutions


def _both(x, emb, offsets, resolutions, log2, bound, grad_seed: int = 0):
    """(triton out, reference out, triton grad, reference grad) for a random output gradient."""
    fast = hashgrid_triton(x, emb, offsets, resolutions, log2, bound)
    ref = hashgrid_torch(x, emb, offsets, resolutions, log2, bound)
    g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(grad_seed)).to(x.device)
    (g_fast,) = torch.autograd.grad(fast, emb, g)
    (g_ref,) = torch.autograd.grad(ref, emb, g)
    return fast, ref, g_fast, g_ref


@cpu_interpreter
@pytest.mark.parametrize(("dim", "level_dim"), [(2, 1), (2, 3), (3, 2)])
def test_interpreter_matches_reference_dense_and_hashed(dim: int, level_dim: int) -> None:
    torch.manual_seed(dim)
    # log2 = 8: the coarse levels are dense (R^D <= 256), the fine ones hash with uint32 wrap-around.
    emb, offsets, resolutions = _grid(dim, 4, 4, 40 if dim == 2 else 24, 8, level_dim)
    assert offsets[1] - offsets[0] == 4**dim and offsets[-1] - offsets[-2] == 2**8
    x = (torch.rand(200, dim) * 2.4 - 1.2) * 0.5  # bound 0.5: some points fall outside and are clamped
    fast, ref, g_fast, g_ref = _both(x, emb, offsets, resolutions, 8, 0.5)
    assert fast.shape == (200, 4 * level_dim) and fast.dtype == torch.float32
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_fast, g_ref, rtol=1e-5, atol=1e-5)


@cpu_interpreter
def test_interpreter_partition_of_unity() -> None:
    # Constant features interpolate to themselves; a unit gradient spreads exactly one unit per point and level.
    emb, offsets, resolutions = _grid(3, 3, 4, 16, 6, 1)
    with torch.no_grad():
        emb.fill_(0.25)
    x = torch.rand(64, 3) * 2 - 1
    out = hashgrid_triton(x, emb, offsets, resolutions, 6, 1.0)
    torch.testing.assert_close(out, torch.full_like(out, 0.25))
    (grad,) = torch.autograd.grad(out.sum(), emb)
    per_level = torch.stack([grad[a:b].sum() for a, b in zip(offsets, offsets[1:])])
    torch.testing.assert_close(per_level, torch.full((3,), 64.0), rtol=1e-5, atol=1e-4)


@cpu_interpreter
def test_interpreter_triplane_is_three_planes_in_one_launch() -> None:
    torch.manual_seed(1)
    grids = [_grid(2, 3, 4, 20, 7, 2) for _ in range(3)]
    embs, offsets, resolutions = [g[0] for g in grids], grids[0][1], grids[0][2]
    x = torch.rand(100, 3) * 2 - 1
    fast = triplane_triton(x, embs, offsets, resolutions, 7, 1.0)
    ref = torch.cat([hashgrid_torch(x[:, list(d)], e, offsets, resolutions, 7, 1.0) for d, e in zip(TRIPLANE_DIMS, embs)], -1)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-6)
    g = torch.randn_like(ref)
    fast_grads = torch.autograd.grad(fast, embs, g)
    ref_grads = torch.autograd.grad(ref, embs, g)
    for a, b in zip(fast_grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@cpu_interpreter
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_interpreter_half_embeddings_accumulate_in_fp32(dtype: torch.dtype) -> None:
    torch.manual_seed(2)
    emb, offsets, resolutions = _grid(2, 3, 4, 20, 7, 1, dtype=dtype)
    x = torch.rand(128, 2) * 2 - 1
    out = hashgrid_triton(x, emb, offsets, resolutions, 7, 1.0)
    ref = hashgrid_torch(x, emb.float(), offsets, resolutions, 7, 1.0)  # same half values, fp32 math
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    g = torch.randn_like(out)
    (grad,) = torch.autograd.grad(out, emb, g)
    (grad_ref,) = torch.autograd.grad(ref, emb, g)
    assert grad.dtype == dtype
    torch.testing.assert_close(grad, grad_ref.to(dtype))


@cpu_interpreter
def test_interpreter_strided_points_and_empty_batch() -> None:
    emb, offsets, resolutions = _grid(2, 2, 4, 8, 6, 1)
    xyz = torch.rand(50, 3) * 2 - 1
    torch.testing.assert_close(
        hashgrid_triton(xyz[:, 1:], emb, offsets, resolutions, 6, 1.0),
        hashgrid_torch(xyz[:, 1:], emb, offsets, resolutions, 6, 1.0),
    )
    assert hashgrid_triton(torch.empty(0, 2), emb, offsets, resolutions, 6, 1.0).shape == (0, 2)


@cpu_interpreter
@pytest.mark.parametrize(("dim", "level_dim"), [(2, 1), (2, 2), (3, 2)])
def test_interpreter_points_gradient_matches_the_reference(dim: int, level_dim: int) -> None:
    """What the torso's deformation learns through: d out / d x, dense and hashed levels; points outside the box
    (clamped) get none."""
    torch.manual_seed(10 + dim)
    emb, offsets, resolutions = _grid(dim, 4, 4, 40 if dim == 2 else 24, 8, level_dim)
    x = ((torch.rand(150, dim) * 2.4 - 1.2) * 0.5).requires_grad_()  # bound 0.5: some clamped
    g = torch.randn(150, 4 * level_dim)
    (fast,) = torch.autograd.grad(hashgrid_triton(x, emb, offsets, resolutions, 8, 0.5), x, g)
    (ref,) = torch.autograd.grad(hashgrid_torch(x, emb, offsets, resolutions, 8, 0.5), x, g)
    assert fast.shape == x.shape and fast.abs().sum() > 0
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-4)
    outside = (x.detach().abs() > 0.5)
    assert outside.any() and (fast[outside] == 0).all()


@cpu_interpreter
def test_interpreter_triplane_points_gradient_sums_the_planes_per_column() -> None:
    torch.manual_seed(3)
    grids = [_grid(2, 3, 4, 20, 7, 2) for _ in range(3)]
    embs, offsets, resolutions = [g[0] for g in grids], grids[0][1], grids[0][2]
    x = (torch.rand(80, 3) * 2 - 1).requires_grad_()
    fast = triplane_triton(x, embs, offsets, resolutions, 7, 1.0)
    ref = torch.cat([hashgrid_torch(x[:, list(d)], e, offsets, resolutions, 7, 1.0) for d, e in zip(TRIPLANE_DIMS, embs)], -1)
    g = torch.randn_like(ref)
    (fast_x,) = torch.autograd.grad(fast, x, g)
    (ref_x,) = torch.autograd.grad(ref, x, g)
    torch.testing.assert_close(fast_x, ref_x, rtol=1e-4, atol=1e-4)
    frozen = [e.detach() for e in embs]  # frozen grids (the torso stage's head): the points still get theirs
    (only_x,) = torch.autograd.grad(triplane_triton(x, frozen, offsets, resolutions, 7, 1.0), x, g)
    torch.testing.assert_close(only_x, fast_x)


def test_rejects_bad_inputs() -> None:
    emb = torch.zeros(10, 1, device=DEVICE)
    with pytest.raises(ErnerfError):
        hashgrid_triton(torch.zeros(4, 2, device=DEVICE), emb, [0, 16], [4], 6, 1.0)  # offsets vs rows
    with pytest.raises(ErnerfError):
        triplane_triton(torch.zeros(4, 2, device=DEVICE), [emb] * 3, [0, 10], [4], 6, 1.0)
    with pytest.raises(ErnerfError):
        hashgrid_triton(torch.zeros(4, 2, device=DEVICE), emb.double(), [0, 10], [4], 6, 1.0)


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("dim", "levels", "level_dim", "base", "top", "log2"),
    [(2, 12, 1, 64, 512, 14), (3, 16, 2, 16, 2048, 19)],  # ER-NeRF tri-plane grid; RAD-NeRF 3D grid
)
def test_cuda_parity_at_model_sizes(dim: int, levels: int, level_dim: int, base: int, top: int, log2: int) -> None:
    torch.manual_seed(3)
    emb, offsets, resolutions = _grid(dim, levels, base, top, log2, level_dim)
    x = torch.rand(2**18, dim, device="cuda") * 2 - 1
    fast, ref, g_fast, g_ref = _both(x, emb, offsets, resolutions, log2, 1.0)
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-5)
    # Atomic adds sum in another order than index_put's: compare at the scale of the largest entry.
    torch.testing.assert_close(g_fast, g_ref, rtol=1e-4, atol=1e-4 * g_ref.abs().max().item())


@pytest.mark.gpu
def test_cuda_triplane_and_half_parity() -> None:
    torch.manual_seed(4)
    grids = [_grid(2, 12, 64, 512, 14, 1, dtype=torch.float16) for _ in range(3)]
    embs, offsets, resolutions = [g[0] for g in grids], grids[0][1], grids[0][2]
    x = torch.rand(2**18, 3, device="cuda") * 2 - 1
    fast = triplane_triton(x, embs, offsets, resolutions, 14, 1.0)
    refs = [hashgrid_torch(x[:, list(d)], e.float(), offsets, resolutions, 14, 1.0) for d, e in zip(TRIPLANE_DIMS, embs)]
    ref = torch.cat(refs, -1)
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-5)
    g = torch.randn_like(ref)
    fast_grads = torch.autograd.grad(fast, embs, g)
    ref_grads = torch.autograd.grad(ref, embs, g)
    for a, b in zip(fast_grads, ref_grads):
        assert a.dtype == torch.float16
        torch.testing.assert_close(a.float(), b.half().float(), rtol=2e-3, atol=1e-3 * b.abs().max().item())


@pytest.mark.gpu
def test_cuda_points_gradient_parity_at_model_sizes() -> None:
    """The points' gradient of ER-NeRF's tri-plane and of a 2D torso-sized grid (the deformation's), against the
    reference at model sizes."""
    torch.manual_seed(5)
    grids = [_grid(2, 12, 64, 512, 14, 1) for _ in range(3)]
    embs, offsets, resolutions = [g[0] for g in grids], grids[0][1], grids[0][2]
    x = (torch.rand(2**16, 3, device="cuda") * 2 - 1).requires_grad_()
    fast = triplane_triton(x, embs, offsets, resolutions, 14, 1.0)
    ref = torch.cat([hashgrid_torch(x[:, list(d)], e, offsets, resolutions, 14, 1.0) for d, e in zip(TRIPLANE_DIMS, embs)], -1)
    g = torch.randn_like(ref)
    (fast_x,) = torch.autograd.grad(fast, x, g)
    (ref_x,) = torch.autograd.grad(ref, x, g)
    torch.testing.assert_close(fast_x, ref_x, rtol=1e-3, atol=1e-4 * ref_x.abs().max().item())
    emb, offsets, resolutions = _grid(2, 16, 16, 2048, 16, 2)
    pts = (torch.rand(2**16, 2, device="cuda") * 2 - 1).requires_grad_()
    g = torch.randn(2**16, 32, device="cuda")
    (fast_p,) = torch.autograd.grad(hashgrid_triton(pts, emb, offsets, resolutions, 16, 1.0), pts, g)
    (ref_p,) = torch.autograd.grad(hashgrid_torch(pts, emb, offsets, resolutions, 16, 1.0), pts, g)
    torch.testing.assert_close(fast_p, ref_p, rtol=1e-3, atol=1e-4 * ref_p.abs().max().item())
