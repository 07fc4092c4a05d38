"""Hash-grid layout (resolutions, offsets, dense/hashed rows), interpolation and gradients."""

from __future__ import annotations

import importlib.util
import itertools

import pytest
import torch

from ernerf.encoders import hashgrid
from ernerf.encoders.hashgrid import (
    HashGridEncoder,
    corner_index,
    hashgrid_torch,
    level_offsets,
    level_resolutions,
    grid_rows_and_weights,
    row_dtype,
)
from ernerf.errors import ErnerfError


def _point_at(corner: list[int], resolution: int, bound: float = 1.0) -> torch.Tensor:
    """x in [-bound, bound] that lands exactly on grid vertex `corner` of a level of this resolution."""
    u = torch.tensor(corner, dtype=torch.float64) / (resolution - 1)
    return (u * 2 * bound - bound).float()[None]


def test_ernerf_levels_and_offsets() -> None:
    resolutions = level_resolutions(12, 64, 512)
    assert resolutions[0] == 64 and resolutions[-1] == 512
    assert resolutions == sorted(resolutions)
    offsets = level_offsets(resolutions, input_dim=2, log2_hashmap_size=14)
    sizes = [b - a for a, b in zip(offsets, offsets[1:])]
    # Levels up to 112 store R^2 rows densely (112^2 = 12544 <= 2^14); from 136 on they hash into 2^14.
    assert sizes == [64**2, 77**2, 93**2, 112**2] + [2**14] * 8
    assert HashGridEncoder(2).embeddings.shape == (offsets[-1], 1)


def test_dense_rows_are_row_major_in_dimension_order() -> None:
    corners = torch.tensor([[3, 5], [0, 7], [7, 7]])
    assert corner_index(corners, resolution=8, log2_hashmap_size=6).tolist() == [3 + 5 * 8, 7 * 8, 63]


def test_hashed_rows_follow_the_uint32_xor_hash() -> None:
    corners = torch.tensor([[1, 1, 1], [3, 5, 7]])
    rows = corner_index(corners, resolution=200, log2_hashmap_size=19).tolist()
    # (1 ^ 2654435761 ^ 805459861) = 2922720805, mod 2^19; (3, 5, 7) with 32-bit wrap of each product.
    assert rows == [2922720805 % 2**19, 329061]


@pytest.mark.parametrize(("dim", "resolutions"), [(2, [16, 200]), (3, [8, 40])])
def test_vectorised_rows_and_weights_match_the_spec_corner_by_corner(dim: int, resolutions: list[int]) -> None:
    torch.manual_seed(0)
    u = torch.rand(50, dim)
    u[0] = 1.0  # the far border: the high corner is clamped
    rows, weights = grid_rows_and_weights(u, resolutions, log2_hashmap_size=9)  # a dense then a hashed level
    for level, resolution in enumerate(resolutions):
        p = u * (resolution - 1)
        frac = p - p.floor()
        for k, bits in enumerate(itertools.product((0, 1), repeat=dim)):  # dimension 0 varies slowest
            b = torch.tensor(bits)
            corner = (p.floor().long() + b).clamp(max=resolution - 1)
            assert torch.equal(rows[:, level, k], corner_index(corner, resolution, 9))
            torch.testing.assert_close(weights[:, level, k], torch.where(b.bool(), frac, 1 - frac).prod(-1))


def test_vertices_return_their_own_embedding() -> None:
    enc = HashGridEncoder(3, num_levels=2, base_resolution=4, desired_resolution=40, log2_hashmap_size=8)
    assert enc.resolutions == [4, 40]
    with torch.no_grad():
        enc.embeddings.copy_(torch.arange(enc.offsets[-1], dtype=torch.float32)[:, None])
    out = enc(_point_at([3, 1, 2], 4))  # a vertex of level 0; of level 1 only if 39 * u is integral
    assert out[0, 0].item() == 3 + 1 * 4 + 2 * 16  # dense level 0
    x = _point_at([13, 26, 39], 40)  # u = (1/3, 2/3, 1): a vertex of both levels
    hashed = ((13 ^ (26 * 2654435761 % 2**32) ^ (39 * 805459861 % 2**32)) % 2**8) + enc.offsets[1]
    out = enc(x)
    assert out[0, 0].item() == pytest.approx(1 + 2 * 4 + 3 * 16)
    assert out[0, 1].item() == pytest.approx(hashed)


def test_dense_level_reproduces_linear_functions_exactly() -> None:
    enc = HashGridEncoder(2, num_levels=1, base_resolution=9, desired_resolution=9, log2_hashmap_size=10)
    grid = torch.stack(torch.meshgrid(torch.arange(9.0), torch.arange(9.0), indexing="xy"), -1).reshape(-1, 2)
    with torch.no_grad():  # row c0 + 9 c1 holds 2 c0 - 3 c1 + 1
        enc.embeddings.copy_((2 * grid[:, 0] - 3 * grid[:, 1] + 1)[:, None])
    x = torch.rand(256, 2) * 2 - 1
    p = (x + 1) / 2 * 8
    torch.testing.assert_close(enc(x)[:, 0], 2 * p[:, 0] - 3 * p[:, 1] + 1, atol=1e-4, rtol=0)


def test_shapes_and_gradients_reach_the_embeddings() -> None:
    enc = HashGridEncoder(3, num_levels=4, level_dim=2, base_resolution=8, desired_resolution=64, log2_hashmap_size=10)
    x = torch.rand(100, 3) * 2 - 1
    out = enc(x)
    assert out.shape == (100, 8) and enc.output_dim == 8
    out[:, 0::2].sum().backward()  # feature 0 of every level
    grad = enc.embeddings.grad
    # Interpolation weights sum to one: each point sends 1 to each level's feature 0, nothing to feature 1.
    assert grad[:, 0].sum().item() == pytest.approx(100 * 4, rel=1e-5)
    assert grad[:, 1].abs().sum().item() == 0.0


def test_points_outside_the_bound_are_clamped_to_the_border() -> None:
    enc = HashGridEncoder(2, num_levels=2, base_resolution=4, desired_resolution=8, bound=2.0)
    torch.testing.assert_close(enc(torch.tensor([[5.0, -9.0]])), enc(torch.tensor([[2.0, -2.0]])))


def test_reference_function_matches_the_module() -> None:
    enc = HashGridEncoder(2, num_levels=3, base_resolution=4, desired_resolution=32, log2_hashmap_size=6, bound=0.5)
    x = torch.rand(50, 2) - 0.5
    ref = hashgrid_torch(x, enc.embeddings, enc.offsets, enc.resolutions, 6, 0.5)
    torch.testing.assert_close(enc(x), ref)


def test_unknown_backend_and_wrong_width_are_user_errors() -> None:
    with pytest.raises(ErnerfError, match="unknown hash-grid backend"):
        HashGridEncoder(2, backend="cuda")
    with pytest.raises(ErnerfError, match="at least base_resolution"):
        HashGridEncoder(2, base_resolution=64, desired_resolution=32)
    with pytest.raises(ErnerfError, match="expects 2-d points"):
        HashGridEncoder(2)(torch.zeros(4, 3))


@pytest.mark.skipif(importlib.util.find_spec("tinycudann") is not None, reason="tinycudann is installed")
def test_tcnn_backend_without_tinycudann_explains_the_fix() -> None:
    with pytest.raises(ErnerfError, match="optional.*backend=torch"):
        HashGridEncoder(2, backend="tcnn")


def _fit_final_loss(enc: torch.nn.Module, steps: int = 300) -> tuple[float, float]:
    """Fit a smooth 3D target through a linear head; return (first, last) loss."""
    torch.manual_seed(0)
    head = torch.nn.Linear(enc.output_dim, 1).cuda()
    opt = torch.optim.Adam([*enc.parameters(), *head.parameters()], lr=1e-2)
    losses = []
    for _ in range(steps):
        x = torch.rand(8192, 3, device="cuda") * 2 - 1
        target = torch.sin(3 * x[:, 0]) * torch.cos(2 * x[:, 1]) + x[:, 2] ** 2
        loss = ((head(enc(x))[:, 0] - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses[0], sum(losses[-20:]) / 20


@pytest.mark.gpu
def test_tcnn_and_torch_backends_fit_the_same_target_equally_well() -> None:
    pytest.importorskip("tinycudann")
    kwargs = dict(input_dim=3, num_levels=8, level_dim=2, base_resolution=16, desired_resolution=256)
    first_t, last_t = _fit_final_loss(HashGridEncoder(**kwargs, backend="torch").cuda())
    first_c, last_c = _fit_final_loss(HashGridEncoder(**kwargs, backend="tcnn").cuda())
    assert last_t < 0.05 * first_t and last_c < 0.05 * first_c
    assert last_c < 3 * last_t and last_t < 3 * last_c


@pytest.mark.gpu
def test_triton_backend_matches_the_reference_bit_layout() -> None:
    kwargs = dict(input_dim=3, num_levels=6, level_dim=2, base_resolution=16, desired_resolution=300)
    ref = HashGridEncoder(**kwargs).cuda()
    fast = HashGridEncoder(**kwargs, backend="triton").cuda()
    fast.load_state_dict(ref.state_dict())
    x = torch.rand(4096, 3, device="cuda") * 2 - 1
    torch.testing.assert_close(fast(x), ref(x), atol=1e-5, rtol=1e-4)


def test_empty_batch_gives_empty_features_and_gradients() -> None:
    """A ray chunk with no occupied samples evaluates the field on zero points: no crash, no gradient."""
    from ernerf.encoders import TriPlaneEncoder

    encoder = TriPlaneEncoder(num_levels=4, base_resolution=4, desired_resolution=32, log2_hashmap_size=8)
    out = encoder(torch.zeros(0, 3))
    assert out.shape == (0, encoder.output_dim)
    out.sum().backward()
    assert all(p.grad is None or not p.grad.any() for p in encoder.parameters())


def _literal_hashgrid(x: torch.Tensor, emb: torch.Tensor, offsets: list[int], resolutions: list[int], log2: int,
                      bound: float) -> torch.Tensor:  # [N, D] -> [N, L * F]
    """The specification spelled out, corner by corner through `corner_index` (slow, obviously right).

    Weights multiply the axes' factors left to right and the corners are summed by `.sum` over [N, L, C, F], the
    order the fast paths must reproduce bit for bit.
    """
    u = ((x.float() + bound) / (2 * bound)).clamp(0.0, 1.0)
    rows, weights = [], []
    for level, resolution in enumerate(resolutions):
        p = u * (resolution - 1)
        low = p.floor()
        frac = p - low
        level_rows, level_weights = [], []
        for bits in itertools.product((0, 1), repeat=u.shape[-1]):  # dimension 0 varies slowest
            corner = (low.long() + torch.tensor(bits)).clamp(max=resolution - 1)
            level_rows.append(corner_index(corner, resolution, log2) + offsets[level])
            weight = torch.ones(u.shape[0])
            for d, bit in enumerate(bits):
                weight = weight * (frac[:, d] if bit else 1 - frac[:, d])
            level_weights.append(weight)
        rows.append(torch.stack(level_rows, -1))
        weights.append(torch.stack(level_weights, -1))
    rows, weights = torch.stack(rows, 1), torch.stack(weights, 1)  # [N, L, C]
    values = emb.index_select(0, rows.reshape(-1)).view(*rows.shape, emb.shape[-1])
    return (weights[..., None] * values).sum(2).flatten(1)


def _cpu_path_only_grid(
    dim: int, base: int, top: int, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[int], list[int]]:
    """Resolutions and offsets of 5 levels from `base` to `top` in a 2^9-row table, dense levels then hashed ones;
    the CPU path in chunks of 64 points (several, the last one partial), its reference out of reach; seed 0."""
    monkeypatch.setattr(hashgrid, "CPU_CHUNK_POINTS", 64)
    monkeypatch.setattr(hashgrid, "hashgrid_reference", None)  # the CPU path must not fall back to it
    torch.manual_seed(0)
    resolutions = level_resolutions(5, base, top)
    offsets = level_offsets(resolutions, dim, log2_hashmap_size=9)
    assert any(r**dim <= 2**9 for r in resolutions) and any(r**dim > 2**9 for r in resolutions)
    return resolutions, offsets


@pytest.mark.parametrize("level_dim", [1, 2])
@pytest.mark.parametrize(("dim", "base", "top"), [(2, 5, 90), (3, 3, 24)])  # dense levels, then hashed ones
def test_cpu_path_gives_the_literal_reference_bit_for_bit(
    dim: int, base: int, top: int, level_dim: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    resolutions, offsets = _cpu_path_only_grid(dim, base, top, monkeypatch)
    emb = torch.randn(offsets[-1], level_dim, requires_grad=True)
    x = torch.rand(300, dim) * 1.6 - 0.8
    x[0], x[1], x[2, 0], x[3] = -0.8, 0.8, 0.8, 2.0  # u = 0, u = 1 (high corner clamped), mixed, beyond the bound
    fast = hashgrid_torch(x, emb, offsets, resolutions, 9, bound=0.8)
    literal = _literal_hashgrid(x, emb, offsets, resolutions, 9, bound=0.8)
    assert torch.equal(fast, literal)
    grad = torch.randn_like(fast)
    (fast_grad,) = torch.autograd.grad(fast, emb, grad)
    (literal_grad,) = torch.autograd.grad(literal, emb, grad)
    assert torch.equal(fast_grad, literal_grad)
    with torch.no_grad():
        assert torch.equal(hashgrid_torch(x, emb, offsets, resolutions, 9, bound=0.8), literal)


def test_points_that_need_a_gradient_get_the_literal_values_and_a_gradient() -> None:
    resolutions = level_resolutions(3, 4, 40)
    offsets = level_offsets(resolutions, 2, log2_hashmap_size=8)
    emb = torch.randn(offsets[-1], 2)
    x = (torch.rand(100, 2) * 2 - 1).requires_grad_()
    out = hashgrid_torch(x, emb, offsets, resolutions, 8)
    assert torch.equal(out, _literal_hashgrid(x.detach(), emb, offsets, resolutions, 8, 1.0))
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_rows_are_int32_only_where_every_row_and_hash_product_fits() -> None:
    ernerf = level_resolutions(12, 64, 512)
    assert row_dtype(level_offsets(ernerf, 2, 14), ernerf, 14) == torch.int32
    # (R - 1) * (2^log2 - 1) is the largest hashed term: 2^16 rows at R = 2^15 + 1 just fit, 2^17 do not.
    assert row_dtype([0, 2**16], [2**15 + 1], 16) == torch.int32
    assert row_dtype([0, 2**17], [2**15 + 1], 17) == torch.int64
    assert row_dtype([0, 2**31], [2], 31) == torch.int64  # the rows themselves


def test_cpu_path_with_int64_rows_matches_the_literal_reference() -> None:
    resolutions = [8, 300]  # 300^3 > 2^23: hashed, and 299 * (2^23 - 1) > 2^31 - 1
    offsets = level_offsets(resolutions, 3, log2_hashmap_size=23)
    assert row_dtype(offsets, resolutions, 23) == torch.int64
    emb = (torch.arange(offsets[-1], dtype=torch.float32) / offsets[-1])[:, None]
    x = torch.rand(200, 3) * 2 - 1
    x[0] = 1.0
    expected = _literal_hashgrid(x, emb, offsets, resolutions, 23, 1.0)
    assert torch.equal(hashgrid_torch(x, emb, offsets, resolutions, 23), expected)


def _points_on_edges(dim: int, resolutions: list[int], count: int, bound: float) -> torch.Tensor:
    """Random points in [-bound, bound]^dim plus the awkward ones: u = 0 and 1, vertices, cell edges, outside."""
    x = torch.rand(count, dim) * 2 * bound - bound
    x[0], x[1], x[2, 0], x[3] = -bound, bound, bound, 1.5 * bound  # u = 0, u = 1, mixed, beyond the bound
    for i, resolution in enumerate(resolutions):  # a vertex of each level, and a point on one of its cell edges
        x[4 + 2 * i] = _point_at([(i + k) % resolution for k in range(dim)], resolution, bound)
        x[5 + 2 * i, 0] = _point_at([resolution // 2] * dim, resolution, bound)[0, 0]
    return x


def _point_grads(
    x: torch.Tensor, emb: torch.Tensor, offsets: list[int], resolutions: list[int], log2: int, bound: float,
    grid_function
) -> tuple[torch.Tensor, ...]:  # outputs, d/dx, d/d embeddings (or None when the table is frozen)
    """A grid function's outputs and its gradients for a fixed upstream gradient."""
    x = x.detach().requires_grad_()
    out = grid_function(x, emb, offsets, resolutions, log2, bound)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    inputs = (x, emb) if emb.requires_grad else (x,)
    grads = torch.autograd.grad(out, inputs, upstream)
    return out, *grads, *([None] if not emb.requires_grad else [])


def _reference_of_x(reference):
    """The autograd reference with the clamp of `hashgrid_torch` in front of it."""
    def grid(x, emb, offsets, resolutions, log2, bound):
        u = ((x.float() + bound) / (2 * bound)).clamp(0.0, 1.0)
        return reference(u, emb, offsets, resolutions, log2)
    return grid


@pytest.mark.parametrize("frozen_table", [False, True])
@pytest.mark.parametrize("level_dim", [1, 2])
@pytest.mark.parametrize(("dim", "base", "top"), [(2, 5, 90), (3, 3, 24)])  # dense levels, then hashed ones
def test_cpu_path_point_gradients_are_the_references_bit_for_bit(
    dim: int, base: int, top: int, level_dim: int, frozen_table: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = _reference_of_x(hashgrid.hashgrid_reference)
    resolutions, offsets = _cpu_path_only_grid(dim, base, top, monkeypatch)
    emb = torch.randn(offsets[-1], level_dim, requires_grad=not frozen_table)
    x = _points_on_edges(dim, resolutions, 300, bound=0.8)
    fast = _point_grads(x, emb, offsets, resolutions, 9, 0.8, hashgrid_torch)
    expected = _point_grads(x, emb, offsets, resolutions, 9, 0.8, reference)
    assert fast[1].abs().sum() > 0 and not fast[1][3].any()  # the clamped point gets none
    for got, want in zip(fast, expected):
        assert (got is None and want is None) or torch.equal(got, want)


def test_cpu_path_point_gradients_on_the_torso_plane(monkeypatch: pytest.MonkeyPatch) -> None:
    """conf/stage/torso.yaml's grid: 2-D, 16 levels of 2 features, 2^16 rows, resolutions 16 to 2048."""
    reference = _reference_of_x(hashgrid.hashgrid_reference)
    monkeypatch.setattr(hashgrid, "hashgrid_reference", None)
    torch.manual_seed(0)
    resolutions = level_resolutions(16, 16, 2048)
    offsets = level_offsets(resolutions, 2, log2_hashmap_size=16)
    emb = torch.empty(offsets[-1], 2).uniform_(-1e-4, 1e-4).requires_grad_()
    x = _points_on_edges(2, resolutions, hashgrid.CPU_CHUNK_POINTS + 100, bound=1.0)
    fast = _point_grads(x, emb, offsets, resolutions, 16, 1.0, hashgrid_torch)
    expected = _point_grads(x, emb, offsets, resolutions, 16, 1.0, reference)
    for got, want in zip(fast, expected):
        assert torch.equal(got, want)


def test_cpu_path_point_gradients_with_int64_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    reference = _reference_of_x(hashgrid.hashgrid_reference)
    monkeypatch.setattr(hashgrid, "hashgrid_reference", None)
    resolutions = [8, 300]  # int64 rows, as in test_cpu_path_with_int64_rows_matches_the_literal_reference
    offsets = level_offsets(resolutions, 3, log2_hashmap_size=23)
    assert row_dtype(offsets, resolutions, 23) == torch.int64
    emb = torch.randn(offsets[-1], 1, generator=torch.Generator().manual_seed(0), requires_grad=True)
    x = _points_on_edges(3, resolutions, 200, bound=1.0)
    for got, want in zip(_point_grads(x, emb, offsets, resolutions, 23, 1.0, hashgrid_torch),
                         _point_grads(x, emb, offsets, resolutions, 23, 1.0, reference)):
        assert torch.equal(got, want)


def test_cpu_path_refuses_a_double_backward_through_the_points() -> None:
    """Its point gradient is not differentiable: create_graph=True raises rather than giving a graph without it."""
    resolutions = level_resolutions(3, 4, 40)
    offsets = level_offsets(resolutions, 2, log2_hashmap_size=8)
    emb = torch.randn(offsets[-1], 2, requires_grad=True)
    x = (torch.rand(20, 2) * 2 - 1).requires_grad_()
    out = hashgrid_torch(x, emb, offsets, resolutions, 8).sum()
    with pytest.raises(RuntimeError, match="no double backward"):
        torch.autograd.grad(out, x, create_graph=True)
