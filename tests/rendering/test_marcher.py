"""Ray marching against closed forms: constant media, empty space, gradients, grid compaction."""

from __future__ import annotations

import math

import pytest
import torch

from ernerf.fields import FieldOutputs
from ernerf.rendering import OccupancyGrid, RayMarcher, intersect_aabb, render_image, render_images
from ernerf.rendering.marcher import compact_static, composite

BOX = (-1.0, -1.0, -1.0, 1.0, 1.0, 1.0)


def constant_field(sigma: float | torch.Tensor, rgb: tuple[float, float, float], extra: float = 0.0):
    """Field with the same density, colour and one extra channel everywhere; counts its samples."""
    calls: list[int] = []

    def field_fn(x: torch.Tensor, d: torch.Tensor) -> FieldOutputs:
        calls.append(x.shape[0])
        sig = torch.as_tensor(sigma, dtype=x.dtype).expand(x.shape[0])
        return FieldOutputs(
            sigma=sig,
            rgb=torch.tensor(rgb).expand(x.shape[0], 3),
            extras={"uncertainty": torch.full((x.shape[0], 1), extra)},
        )

    return field_fn, calls


def sphere_field(radius: float = 0.5, sigma: float = 30.0):
    """Density `sigma` inside a centred sphere, zero outside; red."""

    def field_fn(x: torch.Tensor, d: torch.Tensor) -> FieldOutputs:
        red = torch.tensor([1.0, 0.0, 0.0]).expand(len(x), 3)
        return FieldOutputs(sigma=sphere_density(x, radius, sigma), rgb=red)

    return field_fn


def sphere_density(x: torch.Tensor, radius: float = 0.5, sigma: float = 30.0) -> torch.Tensor:
    """sigma inside the sphere, 0 outside."""
    return (x.norm(dim=-1) < radius).float() * sigma


def test_aabb_intersection_distances() -> None:
    o = torch.tensor([[0.0, 0.0, -3.0], [0.0, 0.0, 0.0], [5.0, 5.0, 5.0]])
    d = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    near, far, hit = intersect_aabb(o, d, torch.tensor(BOX), min_near=0.05)
    torch.testing.assert_close(near[:2], torch.tensor([2.0, 0.05]))
    torch.testing.assert_close(far[:2], torch.tensor([4.0, 1.0]))
    assert hit.tolist() == [True, True, False]


def test_constant_medium_matches_beer_lambert() -> None:
    torch.manual_seed(0)
    sigma, c, bg = 0.7, (0.2, 0.5, 0.9), torch.tensor([1.0, 0.0, 0.3])
    o = torch.tensor([[0.3, -0.4, -3.0], [0.0, 0.0, 0.0]])
    d = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    lengths = torch.tensor([2.0, 0.95])  # through the box; from the centre to the x = 1 face minus min_near
    field_fn, _ = constant_field(sigma, c, extra=2.0)
    out = RayMarcher(num_samples=16, perturb=True)(o, d, field_fn, BOX, bg_color=bg)  # jitter changes nothing
    opacity = 1 - torch.exp(-sigma * lengths)
    torch.testing.assert_close(out.opacity, opacity)
    torch.testing.assert_close(out.rgb, torch.tensor(c) * opacity[:, None] + bg * (1 - opacity[:, None]))
    torch.testing.assert_close(out.extras["uncertainty"], 2.0 * opacity[:, None])
    assert out.samples_evaluated == 32


def test_dense_medium_puts_depth_at_the_first_sample() -> None:
    field_fn, _ = constant_field(1e4, (1.0, 1.0, 1.0))
    marcher = RayMarcher(num_samples=8).eval()  # bin centres
    out = marcher(torch.tensor([[0.0, 0.0, -3.0]]), torch.tensor([[0.0, 0.0, 1.0]]), field_fn, BOX)
    torch.testing.assert_close(out.depth, torch.tensor([2.0 + 0.5 * 2.0 / 8]))
    torch.testing.assert_close(out.opacity, torch.ones(1))


def test_empty_space_and_missed_rays_give_exactly_the_background() -> None:
    bg = torch.rand(3, 3)
    o = torch.tensor([[0.0, 0.0, -3.0], [5.0, 5.0, 5.0], [0.0, 0.0, 0.0]])
    d = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    field_fn, calls = constant_field(0.0, (0.3, 0.3, 0.3))
    out = RayMarcher(num_samples=4)(o, d, field_fn, BOX, bg_color=bg)
    assert torch.equal(out.rgb, bg) and torch.equal(out.opacity, torch.zeros(3))
    assert calls == [8]  # the ray that misses the box costs no field evaluation


def test_gradient_wrt_density_matches_the_closed_form() -> None:
    sigma = torch.tensor(0.8, requires_grad=True)
    field_fn, _ = constant_field(sigma, (1.0, 1.0, 1.0))
    o, d = torch.tensor([[0.0, 0.0, -3.0]]), torch.tensor([[0.0, 0.0, 1.0]])
    out = RayMarcher(num_samples=16)(o, d, field_fn, BOX, bg_color=(0.0, 0.0, 0.0))
    out.rgb[0, 0].backward()  # c = 1, bg = 0: rgb = 1 - exp(-2 sigma)
    torch.testing.assert_close(sigma.grad, 2 * torch.exp(torch.tensor(-1.6)))


def test_occupancy_grid_marks_a_sphere() -> None:
    torch.manual_seed(0)
    grid = OccupancyGrid(BOX, resolution=16, decay=0.95, threshold=0.01)
    assert grid.occupancy_ratio == 1.0  # nothing is skipped before the first update
    for _ in range(8):
        grid.update(sphere_density)
    ids = torch.arange(16**3)
    centres = torch.stack([ids // 256, (ids // 16) % 16, ids % 16], -1) / 16 * 2 - 1 + 1 / 16
    half_diagonal = math.sqrt(3) / 16
    r = centres.norm(dim=-1)
    assert grid.occupied(centres)[r < 0.5 - half_diagonal].all()
    assert not grid.occupied(centres)[r > 0.5 + half_diagonal].any()
    assert 4 / 3 * math.pi * 0.125 / 8 < grid.occupancy_ratio < 0.2
    assert not grid.occupied(torch.tensor([[1.5, 0.0, 0.0]])).any()
    state = OccupancyGrid(BOX, resolution=16)
    state.load_state_dict(grid.state_dict())
    assert state.occupancy_ratio == grid.occupancy_ratio


def test_grid_skips_samples_without_changing_the_image() -> None:
    torch.manual_seed(0)
    grid = OccupancyGrid(BOX, resolution=32)
    for _ in range(8):
        grid.update(sphere_density)
    marcher = RayMarcher(num_samples=32).eval()
    c2w = torch.eye(4)
    c2w[2, 3] = -3.0  # at z = -3 looking down +z at the sphere
    counts: list[int] = []

    def counting_sphere(x: torch.Tensor, d: torch.Tensor) -> FieldOutputs:
        counts.append(len(x))
        return sphere_field()(x, d)

    args = (marcher, counting_sphere, c2w, (24.0, 24.0, 12.0, 12.0), 24, 24, BOX)
    dense = render_image(*args, grid=None, bg_color=(0.0, 0.0, 1.0))
    without = sum(counts)
    counts.clear()
    sparse = render_image(*args, grid=grid, bg_color=(0.0, 0.0, 1.0), chunk=100)
    assert sum(counts) < 0.4 * without
    torch.testing.assert_close(sparse["rgb"], dense["rgb"], atol=2e-3, rtol=0)
    assert sparse["rgb"].shape == (24, 24, 3) and sparse["depth"].shape == (24, 24)
    assert dense["opacity"][12, 12] > 0.99 and dense["opacity"][0, 0] == 0  # sphere centre / corner


def test_compact_static_pads_with_the_sample_count_and_keeps_the_first_when_full() -> None:
    keep = torch.rand(1000, generator=torch.Generator().manual_seed(1)) < 0.3
    ids, count = compact_static(keep, 400)
    exact = keep.nonzero().squeeze(1)
    assert int(count) == len(exact) and ids.shape == (400,)
    assert torch.equal(ids[: len(exact)], exact) and (ids[len(exact):] == keep.numel()).all()
    ids, count = compact_static(keep, 100)
    assert torch.equal(ids, exact[:100]) and int(count) == len(exact)


def test_fixed_capacity_renders_like_exact_compaction_and_drops_only_overflow() -> None:
    grid = OccupancyGrid(BOX, resolution=32)
    for _ in range(4):
        grid.update(sphere_density)
    marcher = RayMarcher(num_samples=32).eval()
    rays_o = torch.tensor([[0.0, 0.0, -3.0]]).expand(64, 3)
    rays_d = torch.nn.functional.normalize(torch.randn(64, 3, generator=torch.Generator().manual_seed(2)) * 0.1
                                           + torch.tensor([0.0, 0.0, 1.0]), dim=-1)
    exact = marcher(rays_o, rays_d, sphere_field(), BOX, grid, (0.0, 0.0, 1.0))
    padded = marcher(rays_o, rays_d, sphere_field(), BOX, grid, (0.0, 0.0, 1.0), capacity=exact.samples_evaluated + 50)
    assert int(padded.samples_occupied) == exact.samples_evaluated
    torch.testing.assert_close(padded.rgb, exact.rgb)
    torch.testing.assert_close(padded.depth, exact.depth)
    full = marcher(rays_o, rays_d, sphere_field(), BOX, grid, (0.0, 0.0, 1.0), capacity=exact.samples_evaluated // 2)
    covered = (full.opacity - exact.opacity).abs() > 1e-6
    assert covered.any() and (full.opacity <= exact.opacity + 1e-6).all()  # dropped samples only remove density


def test_composite_stays_finite_when_a_density_overflows() -> None:
    sigma = torch.tensor([[0.0, 1.0, float("inf"), 2.0], [1e30, 0.0, 0.0, 0.0]], requires_grad=True)
    opacity, values, _ = composite(sigma, torch.full((2,), 0.1), torch.ones(2, 4, 3))
    assert torch.isfinite(opacity).all() and torch.isfinite(values).all()
    torch.testing.assert_close(opacity, torch.ones(2))  # both rays end in an opaque sample
    opacity.sum().backward()
    assert torch.isfinite(sigma.grad).all()


def test_frames_marched_together_each_see_their_own_group() -> None:
    """Three frames as one set of rays, in chunks that straddle frames: each frame's samples reach the field with its
    own group, so each frame is the red sphere tinted by its group, as it renders alone."""
    marcher = RayMarcher(num_samples=32).eval()
    c2w = torch.eye(4).repeat(3, 1, 1)
    c2w[:, 2, 3] = torch.tensor([-3.0, -2.5, -2.0])  # three distances: three different images
    tints = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])

    def tinted_sphere(x: torch.Tensor, d: torch.Tensor, groups: torch.Tensor) -> FieldOutputs:
        return FieldOutputs(sigma=sphere_density(x), rgb=tints[groups])

    bg = torch.rand(3, 16, 16, 3)
    together = render_images(marcher, tinted_sphere, c2w, (16.0, 16.0, 8.0, 8.0), 16, 16, BOX, bg_color=bg, chunk=100)
    assert together["rgb"].shape == (3, 16, 16, 3) and together["opacity"].shape == (3, 16, 16)
    for b in range(3):
        alone = render_image(marcher, lambda x, d, b=b: tinted_sphere(x, d, torch.full((len(x),), b)), c2w[b],
                             (16.0, 16.0, 8.0, 8.0), 16, 16, BOX, bg_color=bg[b], chunk=100)
        for name in ("rgb", "depth", "opacity"):
            torch.testing.assert_close(together[name][b], alone[name], rtol=0, atol=1e-6)
    assert not torch.allclose(together["opacity"][0], together["opacity"][2])  # the frames differ


def test_render_max_samples_keeps_each_rays_first_occupied_samples_in_renders_only() -> None:
    grid = OccupancyGrid(BOX, resolution=32)
    for _ in range(4):
        grid.update(sphere_density)
    rays_o = torch.tensor([[0.0, 0.0, -3.0]]).expand(64, 3)
    rays_d = torch.nn.functional.normalize(torch.randn(64, 3, generator=torch.Generator().manual_seed(3)) * 0.1
                                           + torch.tensor([0.0, 0.0, 1.0]), dim=-1)
    args = (rays_o, rays_d, sphere_field(), BOX, grid, (0.0, 0.0, 1.0))
    full = RayMarcher(num_samples=32).eval()(*args)
    capped = RayMarcher(num_samples=32, render_max_samples=4).eval()(*args)
    many = RayMarcher(num_samples=32, render_max_samples=32).eval()(*args)
    hits = full.opacity > 0.5
    assert hits.sum() > 32
    assert many.samples_evaluated == full.samples_evaluated and torch.equal(many.rgb, full.rgb)
    assert capped.samples_evaluated <= 4 * len(rays_o) < full.samples_evaluated  # the cut did cut
    # what the cut leaves out lies behind its samples, seen through what they leave: at most 1 - opacity of a colour
    left = (1 - capped.opacity)[:, None]
    assert ((capped.rgb - full.rgb).abs() <= left + 1e-6).all()
    assert (capped.opacity[hits] > 0.99).all()  # the dense sphere is nearly opaque within a ray's first 4 samples
    torch.testing.assert_close(capped.rgb[hits], full.rgb[hits], atol=0.01, rtol=0)
    one = RayMarcher(num_samples=32, render_max_samples=1).eval()(*args)
    assert int(hits.sum()) <= one.samples_evaluated <= len(rays_o)  # a sample for each ray that meets an occupied cell
    trained = RayMarcher(num_samples=32, perturb=False, render_max_samples=4).train()(*args)
    assert trained.samples_evaluated == full.samples_evaluated  # training marches every occupied sample


def test_render_max_samples_under_one_is_refused() -> None:
    with pytest.raises(ValueError, match="render_max_samples must be at least 1"):
        RayMarcher(render_max_samples=0)
