"""Depth as colours, one way everywhere (inference's depth video, the validation images): turbo from red (near) to
blue (far) between a fixed near and far, black where nothing was rendered, and a labelled colour bar for the scale."""

from __future__ import annotations

import cv2
import numpy as np

MIN_LABELLED_HEIGHT = 48  # below this a label's text would be taller than a sixth of the bar


def colorize_depth(depth: np.ndarray, near: float, far: float) -> np.ndarray:
    """Turbo colour map of depth [H,W] between near and far; depth 0 (nothing rendered) is black. # -> [H,W,3] RGB"""
    t = np.clip((depth - near) / max(far - near, 1e-6), 0.0, 1.0)
    rgb = cv2.cvtColor(cv2.applyColorMap((255 * (1.0 - t)).astype(np.uint8), cv2.COLORMAP_TURBO), cv2.COLOR_BGR2RGB)
    # black where depth <= 0: a masked AND, because boolean-index assignment is far slower on a 1080p frame
    return cv2.bitwise_and(rgb, rgb, mask=np.logical_not(depth <= 0).view(np.uint8))


def depth_range(depth: np.ndarray) -> tuple[float, float]:
    """Robust (near, far) of the rendered (non-zero) depths, fixed once so the colours do not flicker."""
    valid = depth[depth > 0]
    if valid.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(valid, [2, 98])
    return float(lo), float(max(hi, lo + 1e-3))


def colour_bar(height: int, near: float, far: float) -> np.ndarray:
    """The scale of `colorize_depth(., near, far)` as a vertical bar [height, W, 3]: near at the top, far at the
    bottom, with both values written beside it when the image is tall enough for text."""
    bar_width = max(4, height // 16)
    ramp = np.linspace(near, far, height, dtype=np.float32)[:, None].repeat(bar_width, axis=1)
    bar = colorize_depth(np.maximum(ramp, np.finfo(np.float32).tiny), near, far)
    if height < MIN_LABELLED_HEIGHT:
        return bar
    scale = min(1.0, height / 400)
    labels = [f"{near:.2f}", f"{far:.2f}"]
    sizes = [cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0] for text in labels]
    panel = np.zeros((height, max(w for w, _ in sizes) + 4, 3), np.uint8)
    cv2.putText(panel, labels[0], (2, sizes[0][1] + 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1)
    cv2.putText(panel, labels[1], (2, height - 3), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1)
    return np.concatenate([bar, panel], axis=1)


def depth_with_scale(depth: np.ndarray, near: float, far: float) -> np.ndarray:
    """Coloured depth [H,W] with its colour bar on the right. # -> [H, W + bar, 3] RGB"""
    return np.concatenate([colorize_depth(depth, near, far), colour_bar(depth.shape[0], near, far)], axis=1)
