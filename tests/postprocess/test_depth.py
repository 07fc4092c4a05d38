"""Depth colours and their scale (ernerf/postprocess/depth.py): one colour map for inference and the loggers."""

from __future__ import annotations

import numpy as np

from ernerf.postprocess.depth import colorize_depth, colour_bar, depth_with_scale


def test_the_colour_bar_runs_from_near_at_the_top_to_far_at_the_bottom() -> None:
    bar = colour_bar(32, 1.0, 3.0)
    assert bar.shape[0] == 32
    ends = colorize_depth(np.array([[1.0, 3.0]], np.float32), 1.0, 3.0)[0]
    assert np.array_equal(bar[0, 0], ends[0]) and np.array_equal(bar[-1, 0], ends[1])
    assert ends[0, 0] > ends[0, 2] and ends[1, 2] > ends[1, 0]  # near red, far blue


def test_a_tall_colour_bar_is_labelled_and_a_short_one_is_not() -> None:
    short, tall = colour_bar(16, 1.0, 3.0), colour_bar(256, 1.0, 3.0)
    assert short.shape[1] == 4  # the bar alone
    labels = tall[:, 16:]
    assert labels.shape[1] > 10 and labels[:40].max() == 255 and labels[-40:].max() == 255  # "1.00" and "3.00"
    assert labels[100:150].max() == 0  # nothing written between them


def test_depth_with_scale_is_the_coloured_depth_and_its_bar() -> None:
    depth = np.linspace(0.5, 1.5, 64 * 48, dtype=np.float32).reshape(64, 48)
    image = depth_with_scale(depth, 0.5, 1.5)
    assert np.array_equal(image[:, :48], colorize_depth(depth, 0.5, 1.5))
    assert np.array_equal(image[:, 48:], colour_bar(64, 0.5, 1.5))
