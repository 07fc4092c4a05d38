"""Tri-plane / 3D grid encoders: shapes, plane projections, and fitting an image."""

from __future__ import annotations

import math

import torch

from ernerf.encoders import GridEncoder3D, TriPlaneEncoder


def test_ernerf_sizes_give_36_features() -> None:
    enc = TriPlaneEncoder(num_levels=12, level_dim=1, base_resolution=64, desired_resolution=512, log2_hashmap_size=14)
    assert enc(torch.rand(10, 3) * 2 - 1).shape == (10, 36) and enc.output_dim == 36
    assert GridEncoder3D(num_levels=16, level_dim=2).output_dim == 32


def test_each_plane_sees_only_its_two_axes() -> None:
    torch.manual_seed(0)
    enc = TriPlaneEncoder(num_levels=2, base_resolution=8, desired_resolution=16, log2_hashmap_size=8)
    with torch.no_grad():
        for plane in (enc.xy, enc.yz, enc.xz):
            plane.embeddings.normal_()
    a = torch.tensor([[0.1, 0.2, 0.3]])
    b = torch.tensor([[0.1, -0.7, 0.3]])  # same x and z: only the xz plane agrees
    fa, fb = enc(a), enc(b)
    torch.testing.assert_close(fa[:, 4:], fb[:, 4:])
    assert not torch.allclose(fa[:, :2], fb[:, :2]) and not torch.allclose(fa[:, 2:4], fb[:, 2:4])


def test_triplane_fits_an_image_in_a_few_hundred_steps() -> None:
    torch.manual_seed(0)
    side = 48
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, side), torch.linspace(-1, 1, side), indexing="ij")
    image = 0.5 + 0.4 * torch.sin(4 * xs) * torch.cos(3 * ys) + 0.1 * (xs > 0.2).float()  # [side, side]
    points = torch.stack([xs, ys, torch.zeros_like(xs)], -1).reshape(-1, 3)
    enc = TriPlaneEncoder(num_levels=4, base_resolution=8, desired_resolution=48, log2_hashmap_size=10)
    head = torch.nn.Linear(enc.output_dim, 1)
    opt = torch.optim.Adam([*enc.parameters(), *head.parameters()], lr=3e-2)
    losses = []
    for _ in range(200):
        loss = ((head(enc(points))[:, 0] - image.reshape(-1)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.02 * losses[0]
    assert -10 * math.log10(losses[-1]) > 30  # PSNR in dB for a [0, 1] image


def windowed_pair(levels: int = 4) -> tuple[TriPlaneEncoder, TriPlaneEncoder, torch.Tensor]:
    """An encoder with random tables, a twin of it, and points."""
    torch.manual_seed(0)
    enc = TriPlaneEncoder(num_levels=levels, level_dim=2, base_resolution=8, desired_resolution=64, log2_hashmap_size=10)
    with torch.no_grad():
        for plane in (enc.xy, enc.yz, enc.xz):
            plane.embeddings.normal_()
    twin = TriPlaneEncoder(num_levels=levels, level_dim=2, base_resolution=8, desired_resolution=64, log2_hashmap_size=10)
    twin.load_state_dict(enc.state_dict())
    return enc, twin, torch.rand(50, 3) * 2 - 1


def test_open_levels_zero_the_closed_levels_and_weigh_the_opening_one() -> None:
    enc, twin, x = windowed_pair()
    full = twin(x).view(50, 3, 4, 2)  # planes, levels, features
    enc.open_levels(2.5)  # levels 0-1 whole, level 2 half-way on the cosine ease, level 3 closed
    out = enc(x).view(50, 3, 4, 2)
    torch.testing.assert_close(out[:, :, :2], full[:, :, :2])
    torch.testing.assert_close(out[:, :, 2], 0.5 * full[:, :, 2])
    assert out[:, :, 3].abs().max() == 0 and full[:, :, 3].abs().max() > 0
    enc(x).square().sum().backward()
    rows = enc.xy.offsets  # a level's rows: a closed level's get no gradient, the open ones do
    assert enc.xy.embeddings.grad[rows[3]:rows[4]].abs().max() == 0
    assert enc.xy.embeddings.grad[rows[0]:rows[1]].abs().max() > 0


def test_all_levels_open_is_the_plain_encoder_and_the_weights_are_written_in_place() -> None:
    enc, twin, x = windowed_pair()
    storage = enc.level_weights.data_ptr()
    enc.open_levels(1.0)
    assert enc.level_weights.tolist() == [1.0, 0.0, 0.0, 0.0]
    enc.open_levels(4.0)  # a captured CUDA graph reads the buffer it captured: it must stay that buffer
    assert enc.level_weights.data_ptr() == storage and enc.level_weights.tolist() == [1.0] * 4
    torch.testing.assert_close(enc(x), twin(x))
    assert "level_weights" not in enc.state_dict()  # a trained encoder loads with every level open
