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
