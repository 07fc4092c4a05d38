"""Face-mesh topology shared by preprocessing and metrics: mediapipe's 478-point mesh, its iBUG-68 subset, the
eye landmarks and OpenFace's AU45 (blink) scale, with the eye measures both compute the same way."""

from __future__ import annotations

import numpy as np

# Mesh vertex for each of the 68 iBUG points. "Left" is the image left (the subject's right side).
# Chosen on mediapipe's canonical topology and checked by drawing them on real crops.
IBUG68_FROM_MESH = np.array([
    # 0-16 jaw, image left at eye level -> chin (8) -> image right; mirror pairs along the face oval,
    # picked so they sit about evenly by arc length as iBUG's do (measured on three real clips)
    127, 234, 93, 132, 58, 136, 150, 176, 152, 400, 379, 365, 288, 361, 323, 454, 356,
    # 17-21 left brow outer -> inner, 22-26 right brow inner -> outer (upper brow edge)
    70, 63, 105, 66, 107, 336, 296, 334, 293, 300,
    # 27-30 nose bridge top -> tip, 31-35 nostril base left -> right (33 = below the tip)
    168, 197, 5, 4, 98, 97, 2, 326, 327,
    # 36-41 left eye: outer corner, upper outer, upper inner, inner corner, lower inner, lower outer
    33, 160, 158, 133, 153, 144,
    # 42-47 right eye: inner corner, upper inner, upper outer, outer corner, lower outer, lower inner
    362, 385, 387, 263, 373, 380,
    # 48-59 outer lips: left corner, upper lip -> right corner (54), lower lip back to the left
    61, 40, 37, 0, 267, 270, 291, 321, 314, 17, 84, 91,
    # 60-67 inner lips: left corner, upper -> right corner (64), lower back
    78, 81, 13, 311, 308, 402, 14, 178,
])
MOUTH_IBUG = range(48, 68)  # iBUG-68 outer (48-59) and inner (60-67) lips

# Mediapipe face-mesh indices: eye corners and three upper/lower lid pairs (same order, facing each other).
EYES = {
    "right": {"corners": (33, 133), "upper": (160, 159, 158), "lower": (144, 145, 153)},
    "left": {"corners": (263, 362), "upper": (387, 386, 385), "lower": (373, 374, 380)},
}
AU_MAX = 5.0  # OpenFace intensity scale is 0..5


def eye_aspect_ratio(mesh: np.ndarray) -> np.ndarray:
    """Mean lid gap over eye width, averaged over both eyes (scale and in-plane rotation free). # [N,478,3] -> [N]"""
    xy = np.asarray(mesh, dtype=np.float64)[..., :2]
    ratios = []
    for eye in EYES.values():
        gap = np.linalg.norm(xy[:, list(eye["upper"])] - xy[:, list(eye["lower"])], axis=-1).mean(axis=1)
        width = np.linalg.norm(xy[:, eye["corners"][0]] - xy[:, eye["corners"][1]], axis=-1)
        ratios.append(gap / np.maximum(width, 1e-6))
    return np.mean(ratios, axis=0)


def open_eye_level(ear: np.ndarray, percentile: float = 90.0) -> float:
    """The subject's open-eye aspect ratio: a high percentile over frames (as the blink step uses)."""
    return float(np.percentile(np.asarray(ear, np.float64), percentile))


def au45_at_open_level(ear: np.ndarray, open_level: float, closed_ratio: float = 0.15) -> np.ndarray:
    """AU45 0..5 from eye aspect ratios against a GIVEN open level (the blink step's mapping). # [T] -> [T]"""
    closure = (1.0 - np.asarray(ear, np.float64) / max(open_level, 1e-9)) / (1.0 - closed_ratio)
    return AU_MAX * np.clip(closure, 0.0, 1.0)
