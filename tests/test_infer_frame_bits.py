"""The per-frame conversions of inference and the live server give, bit for bit, what the plain numpy expressions gave:
render colours to uint8, backgrounds to [0, 1] floats, and source frames decoded (real videos of both clips)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from ernerf.apps.inference import FrameSource, to_uint8, unit_colours
from ernerf.io.layout import SubjectLayout

TRAIN_CLIPS = ["train/trump_10s.mp4", "train/hdtf_aoc_8s.mp4"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_to_uint8_is_the_clipped_rounded_expression(dtype) -> None:
    """The floats next to each rounding boundary (ties at .5 included), values outside [0, 1], a render-sized image."""
    rng = np.random.default_rng(0)
    edges = ((np.arange(256) + 0.5) / 255).astype(dtype)[:, None].repeat(7, 1)
    for step in range(1, 4):  # 3 representable values either side of each boundary
        edges[:, 3 + step] = np.nextafter(edges[:, 2 + step], dtype(2))
        edges[:, 3 - step] = np.nextafter(edges[:, 4 - step], dtype(-1))
    for values in (edges.astype(dtype), rng.uniform(-0.2, 1.2, (512, 512, 3)).astype(dtype),
                   np.array([-np.inf, -0.0, 0.0, 1.0, np.inf], dtype)):
        expected = (np.clip(values, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
        got = to_uint8(values)
        assert got.dtype == np.uint8 and np.array_equal(got, expected)


def test_unit_colours_are_the_divided_floats() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (64, 48, 3), dtype=np.uint8)
    pixels[0, :, 0] = np.arange(48) * 5
    got, expected = unit_colours(pixels), pixels.astype(np.float32) / 255.0
    assert got.dtype == np.float32 and np.array_equal(got.view(np.uint32), expected.view(np.uint32))


@pytest.mark.parametrize("clip", TRAIN_CLIPS)
def test_source_frames_are_the_decoders_frames_in_rgb(prepare_subject, clip: str) -> None:
    """Every frame of the real videos, walked forward then back, as cv2 decodes and converts them."""
    video = SubjectLayout(prepare_subject(clip, upto="ingest")).video
    capture, expected = cv2.VideoCapture(str(video)), []
    while (read := capture.read())[0]:
        expected.append(cv2.cvtColor(read[1], cv2.COLOR_BGR2RGB))
    capture.release()
    source = FrameSource(video)
    for i in [*range(len(expected)), *range(len(expected) - 1, -1, -1)]:
        assert np.array_equal(source.get(i), expected[i])
    source.close()
    assert len(expected) > 150
