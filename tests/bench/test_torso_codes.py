"""bench/torso_codes.py: the weighted PSNR it scores with."""

from __future__ import annotations

import math

import numpy as np

from tests.bench.scripts import bench_module


def test_weighted_psnr_weighs_each_pixels_squared_error() -> None:
    torso_codes = bench_module("torso_codes")
    truths = np.zeros((1, 2, 2, 3), np.uint8)
    renders = truths.copy()
    renders[0, 0, 0] = 51  # 0.2 off
    renders[0, 1, 1] = 102  # 0.4 off
    weights = np.array([[[1.0, 0.0], [0.0, 0.5]]])
    expected = -10 * math.log10((1.0 * 0.2**2 + 0.5 * 0.4**2) / 1.5)
    assert math.isclose(torso_codes.weighted_psnr(renders, truths, weights), expected, rel_tol=1e-9)
    assert torso_codes.weighted_psnr(renders, truths, np.array([[[0.0, 1.0], [1.0, 0.0]]])) >= 99  # the capped PSNR
