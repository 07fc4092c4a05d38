"""Face-mesh measures for evaluation: iBUG mouth points, AU45 on a fixed open-eye level, jitter over detected runs."""

from __future__ import annotations

import numpy as np

from ernerf.face_topology import IBUG68_FROM_MESH, MOUTH_IBUG, au45_at_open_level, open_eye_level  # noqa: F401

STABLE_MESH_POINTS = (33, 133, 263, 362, 168, 6, 4)  # eye corners and nose bridge: move with the head, not the mouth


def mouth_points(mesh: np.ndarray) -> np.ndarray:
    """iBUG 48-67 mouth landmarks from face meshes, x, y. # [T, 478, 3] -> [T, 20, 2]"""
    return np.asarray(mesh)[:, IBUG68_FROM_MESH[list(MOUTH_IBUG)], :2]


def jitter_valid(points: np.ndarray, valid: np.ndarray) -> float:
    """Mean |second difference| of points [T, K, 2] over triples of consecutive valid frames; NaN if none."""
    p, ok = np.asarray(points, np.float64), np.asarray(valid, bool)
    triples = ok[2:] & ok[1:-1] & ok[:-2]
    if not triples.any():
        return float("nan")
    accel = np.linalg.norm(p[2:] - 2 * p[1:-1] + p[:-2], axis=-1).mean(axis=-1)  # [T-2] mean over points
    return float(accel[triples].mean())


def mean_absolute_error(a: np.ndarray, b: np.ndarray) -> float:
    """Mean |a - b| of two equal-length signals."""
    return float(np.mean(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
