"""Paste-back alpha masks are, bit for bit, what the plain code gave: numpy's smoothstep expression over the distance
transform."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from ernerf.postprocess.pasteback import feather_alpha


def reference_feather(mask: np.ndarray, feather_px: float) -> np.ndarray:
    """feather_alpha as it was: numpy's expression, a fresh array per step."""
    inside = np.pad(mask.astype(np.uint8), 1)
    dist = cv2.distanceTransform(inside, cv2.DIST_L2, 5)[1:-1, 1:-1]
    t = np.clip(dist / max(feather_px, 1e-6), 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)


def assert_same_bits(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.dtype == expected.dtype == np.float32 and got.shape == expected.shape
    assert np.array_equal(got.view(np.uint32), expected.view(np.uint32))  # -0.0 and 0.0 differ too


@pytest.mark.parametrize("feather_px", [0.0, 0.5, 3.0, 16.0, 41.7])
def test_feather_alpha_is_numpys_expression(feather_px: float) -> None:
    """Masks touching the image edge, holes, and single pixels; feathers of none to wider than the mask."""
    rng = np.random.default_rng(int(feather_px * 10))
    mask = cv2.dilate((rng.random((200, 300)) > 0.995).astype(np.uint8), np.ones((25, 25), np.uint8)).astype(bool)
    mask[:, :40] = True
    mask[150:160, 200:210] = False
    assert_same_bits(feather_alpha(mask, feather_px), reference_feather(mask, feather_px))
