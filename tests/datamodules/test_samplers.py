"""Ray samplers: how many pixels, where, and in which order."""

from __future__ import annotations

import pytest
import torch

from datamodules.samplers import AlternatingRaySampler, PatchRaySampler, RandomRaySampler, Rect, RectRaySampler
from ernerf.errors import ErnerfError

RECTS = {"lips": Rect(10, 14, 20, 26), "face": Rect(2, 30, 4, 40)}


def test_random_sampler_draws_num_rays_inside_the_image_or_every_pixel_once() -> None:
    sample = RandomRaySampler(500)(32, 48, RECTS, torch.Generator().manual_seed(0))
    assert sample.index.shape == (500,) and sample.patch_shape is None
    assert 0 <= int(sample.index.min()) and int(sample.index.max()) < 32 * 48
    small = RandomRaySampler(10_000)(8, 8, RECTS)
    assert sorted(small.index.tolist()) == list(range(64))


def test_patch_sampler_returns_a_contiguous_square() -> None:
    sample = PatchRaySampler(5)(20, 30, RECTS, torch.Generator().manual_seed(1))
    rows, cols = sample.index // 30, sample.index % 30
    assert sample.patch_shape == (5, 5)
    assert rows.view(5, 5)[:, 0].diff().eq(1).all() and cols.view(5, 5)[0].diff().eq(1).all()
    assert (rows.view(5, 5) == rows.view(5, 5)[:, :1]).all()  # each patch row lies on one image row


def test_rect_sampler_covers_exactly_the_lips_rectangle_row_major() -> None:
    sample = RectRaySampler("lips")(32, 48, RECTS)
    assert sample.patch_shape == (4, 6)
    assert sample.index.tolist() == [r * 48 + c for r in range(10, 14) for c in range(20, 26)]
    assert RECTS["lips"].contains(sample.index, 48).all()
    with pytest.raises(ErnerfError, match="region 'teeth'"):
        RectRaySampler("teeth")(32, 48, RECTS)


def test_alternating_sampler_cycles_its_samplers() -> None:
    sampler = AlternatingRaySampler([RectRaySampler("lips"), RandomRaySampler(7)])
    shapes = [sampler(32, 48, RECTS).index.shape[0] for _ in range(4)]
    assert shapes == [24, 7, 24, 7]
