"""Ray samplers: how many pixels, where, and in which order."""

from __future__ import annotations

import pytest
import torch

from datamodules.samplers import AlternatingRaySampler, PatchRaySampler, RandomRaySampler, Rect, RectRaySampler, square_pixels
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


def test_a_fixed_size_square_is_centred_on_the_region_and_kept_inside_the_image() -> None:
    sample = RectRaySampler("lips", size=6)(32, 48, RECTS)
    assert sample.patch_shape == (6, 6)
    assert sample.index.tolist() == [r * 48 + c for r in range(9, 15) for c in range(20, 26)]
    corner = square_pixels(Rect(0, 2, 45, 48), 6, 32, 48)  # a region at the top right corner
    assert corner.tolist() == [r * 48 + c for r in range(0, 6) for c in range(42, 48)]
    as_tensor = square_pixels(torch.tensor([10, 14, 20, 26]), 6, 32, 48)
    assert torch.equal(as_tensor, sample.index)


def test_size_max_fits_the_largest_region_of_the_subject() -> None:
    sampler = RectRaySampler("lips", size="max")
    assert sampler.fixed_shape
    with pytest.raises(ErnerfError, match="fitted"):
        sampler(32, 48, RECTS)
    sampler.fit({"lips": torch.tensor([[10, 14, 20, 26], [8, 17, 20, 27]])})  # sides 4 x 6, then 9 x 7
    assert sampler.size == 9 and sampler(32, 48, RECTS).patch_shape == (9, 9)
    with pytest.raises(ErnerfError, match="size must be"):
        RectRaySampler("lips", size=0)


def test_alternating_turns_are_layouts_of_their_own() -> None:
    sampler = AlternatingRaySampler([RectRaySampler("lips", size=4), RandomRaySampler(7)])
    assert sampler.fixed_shape and [type(s) for s in sampler.layouts()] == [RectRaySampler, RandomRaySampler]
    assert [sampler.next_layout() for _ in range(3)] == [0, 1, 0]
    assert not AlternatingRaySampler([RectRaySampler("lips"), RandomRaySampler(7)]).fixed_shape
