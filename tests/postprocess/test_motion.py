"""Ping-pong motion: forward then back through the training frames, never a jump; optional smoothing."""

from __future__ import annotations

import numpy as np
import pytest

from ernerf.errors import ErnerfError
from ernerf.postprocess.motion import pingpong_indices, plan_motion, smooth_poses


def rot_z(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def poses_with_noise(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    clean = np.tile(np.eye(4), (n, 1, 1))
    angles = np.linspace(0, 0.5, n)
    clean[:, :3, :3] = [rot_z(a) for a in angles]
    clean[:, :3, 3] = np.stack([angles, np.zeros(n), np.ones(n)], 1)
    noisy = clean.copy()
    noisy[:, :3, :3] = [rot_z(a + e) for a, e in zip(angles, rng.normal(0, 0.02, n))]
    noisy[:, :3, 3] += rng.normal(0, 0.02, (n, 3))
    return clean, noisy


@pytest.mark.parametrize("n,length,start", [(10, 50, 0), (10, 50, 7), (2, 9, 1), (250, 1000, 249)])
def test_pingpong_walks_without_jumps(n, length, start):
    idx = pingpong_indices(n, length, start)
    assert len(idx) == length and idx[0] == start
    assert np.abs(np.diff(idx)).max() == 1  # every step moves one frame, no jump, no stall
    assert idx.min() >= 0 and idx.max() <= n - 1


def test_pingpong_turns_at_both_ends():
    assert pingpong_indices(4, 12, 0).tolist() == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3, 2, 1]
    assert pingpong_indices(1, 3).tolist() == [0, 0, 0]


def test_smoothing_reduces_jitter_and_keeps_rotations():
    clean, noisy = poses_with_noise(100)
    smooth = smooth_poses(noisy, 9)
    assert np.abs(smooth[:, :3, 3] - clean[:, :3, 3]).mean() < 0.6 * np.abs(noisy[:, :3, 3] - clean[:, :3, 3]).mean()
    rots = smooth[:, :3, :3].astype(np.float64)
    assert np.allclose(rots @ rots.transpose(0, 2, 1), np.eye(3), atol=1e-5)
    assert np.allclose(np.linalg.det(rots), 1.0, atol=1e-5)
    assert np.array_equal(smooth_poses(noisy, 1), noisy.astype(np.float32))


def test_plan_follows_indices_and_blinks():
    clean, _ = poses_with_noise(6)
    eye = np.arange(6, dtype=np.float32) / 10
    plan = plan_motion(clean, eye, length=14, start=2)
    assert np.allclose(plan.poses, clean[plan.indices])
    assert np.allclose(plan.eye, eye[plan.indices])


def test_bad_motion_inputs_raise():
    clean, _ = poses_with_noise(6)
    with pytest.raises(ErnerfError, match="start"):
        pingpong_indices(6, 10, start=6)
    with pytest.raises(ErnerfError, match="blink"):
        plan_motion(clean, np.zeros(5), length=3)
    with pytest.raises(ErnerfError, match="0 frames"):
        plan_motion(clean, None, length=0)
