"""Where a render's error is: the validation error split over face, hair, neck, torso and background.

A whole-frame PSNR says how much error there is, not where; improving the model starts from where. The regions
come from the dataset's own parsing maps (head, neck, torso, background) with the head split by the face mesh's
hull into the face (skin, eyes, mouth) and the rest of the head (hair, ears).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

REGIONS = ("face", "hair", "neck", "torso", "background")
FACE, HAIR, NECK, TORSO, BACKGROUND = range(len(REGIONS))
# the dataset's parsing labels (ernerf.preprocess.parsing): background 0, head 1, neck 2, torso 3
_FROM_PARSING = np.array([BACKGROUND, HAIR, NECK, TORSO], np.uint8)


def region_labels(parsing: np.ndarray, mesh_xy: np.ndarray | None) -> np.ndarray:
    """Region index per pixel from a parsing label map [H, W] and the face mesh's points [P, 2] in its pixels
    (None: no mesh, so the whole head counts as hair). # -> uint8 [H, W]"""
    labels = _FROM_PARSING[parsing]
    if mesh_xy is not None:
        hull = np.zeros(parsing.shape, np.uint8)
        cv2.fillConvexPoly(hull, cv2.convexHull(np.round(mesh_xy).astype(np.int32)), 1)
        labels[(labels == HAIR) & (hull > 0)] = FACE
    return labels


def squared_error(render: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-pixel squared error averaged over the colour channels, images in [0, 1]. # uint8 [H,W,3] x2 -> [H,W]"""
    diff = render.astype(np.float32) / 255.0 - truth.astype(np.float32) / 255.0
    return (diff * diff).mean(axis=-1)


def region_errors(renders: Sequence[np.ndarray], truths: Sequence[np.ndarray],
                  labels: Sequence[np.ndarray]) -> tuple[dict[str, float], np.ndarray]:
    """Per region over all frames: `region_psnr_<region>` (dB, from the region's mean squared error) and
    `region_share_<region>` (its part of the frames' summed squared error; the shares add up to 1); and the root of
    the per-pixel squared error averaged over frames [H, W] (where the model is wrong most often)."""
    sums, counts = np.zeros(len(REGIONS)), np.zeros(len(REGIONS))
    total_map = None
    for render, truth, label in zip(renders, truths, labels):
        err = squared_error(render, truth)
        total_map = err if total_map is None else total_map + err
        sums += np.bincount(label.ravel(), weights=err.ravel(), minlength=len(REGIONS))[:len(REGIONS)]
        counts += np.bincount(label.ravel(), minlength=len(REGIONS))[:len(REGIONS)]
    total = sums.sum()
    out: dict[str, float] = {}
    for k, name in enumerate(REGIONS):
        if counts[k] == 0:
            continue
        mse = sums[k] / counts[k]
        out[f"region_psnr_{name}"] = float(10 * np.log10(1.0 / max(mse, 1e-10)))
        out[f"region_share_{name}"] = float(sums[k] / total) if total > 0 else 0.0
    return out, np.sqrt(total_map / len(renders))
