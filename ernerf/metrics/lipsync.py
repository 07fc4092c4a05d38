"""Lip-sync and motion figures that need no downloaded network."""

from __future__ import annotations

import numpy as np

from ernerf.constants import FPS

# Mediapipe face-mesh indices of the inner lips (upper/lower pairs down the middle of the mouth)
# and of the outer eye corners used to normalise distances by face size.
INNER_LIP_PAIRS = ((13, 14), (82, 87), (312, 317))
EYE_OUTER_CORNERS = (33, 263)
# iBUG-68 equivalents: inner lips 61-63 (upper) over 67-65 (lower); outer eye corners 36 and 45.
IBUG_INNER_LIP_PAIRS = ((61, 67), (62, 66), (63, 65))
IBUG_EYE_OUTER_CORNERS = (36, 45)


def mouth_opening(points: np.ndarray, ibug: bool = False) -> np.ndarray:
    """Per-frame inner-lip gap normalised by the outer-eye-corner distance. points: [T, K, 2+]."""
    pairs = IBUG_INNER_LIP_PAIRS if ibug else INNER_LIP_PAIRS
    eyes = IBUG_EYE_OUTER_CORNERS if ibug else EYE_OUTER_CORNERS
    p = np.asarray(points, dtype=np.float64)[..., :2]
    gap = np.mean([np.linalg.norm(p[:, a] - p[:, b], axis=-1) for a, b in pairs], axis=0)
    scale = np.linalg.norm(p[:, eyes[0]] - p[:, eyes[1]], axis=-1)
    return gap / np.maximum(scale, 1e-6)


def audio_energy(wav: np.ndarray, sample_rate: int, num_frames: int, fps: float = FPS) -> np.ndarray:
    """RMS loudness of the audio in each video frame's interval, [num_frames]."""
    hop = sample_rate / fps
    out = np.zeros(num_frames)
    for i in range(num_frames):
        seg = wav[int(round(i * hop)): int(round((i + 1) * hop))]
        out[i] = float(np.sqrt(np.mean(seg.astype(np.float64) ** 2))) if len(seg) else 0.0
    return out


def correlation(a: np.ndarray, b: np.ndarray, max_lag: int = 0) -> float:
    """Pearson correlation of two signals, the best over lags in [-max_lag, max_lag] frames.

    A small lag allowance absorbs the usual audio-visual offset (mouth shapes lead the sound by a
    frame or two); 0 for constant signals.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    best = -1.0
    for lag in range(-max_lag, max_lag + 1):
        x, y = (a[lag:], b[: n - lag]) if lag >= 0 else (a[: n + lag], b[-lag:])
        if len(x) < 3 or x.std() < 1e-12 or y.std() < 1e-12:
            continue
        best = max(best, float(np.corrcoef(x, y)[0, 1]))
    return best if best > -1.0 else 0.0


def landmark_distance(pred: np.ndarray, target: np.ndarray, indices: list[int] | range | None = None,
                      align_mean: bool = True) -> float:
    """LMD: mean Euclidean distance (pixels) between corresponding landmarks over frames.

    With `align_mean`, each frame's selected points are centred on their mean first, so a global
    shift of the head does not count as a lip error (the usual LMD protocol compares mouth shape).
    """
    p = np.asarray(pred, np.float64)[..., :2]
    t = np.asarray(target, np.float64)[..., :2]
    if indices is not None:
        p, t = p[:, list(indices)], t[:, list(indices)]
    if align_mean:
        p = p - p.mean(axis=1, keepdims=True)
        t = t - t.mean(axis=1, keepdims=True)
    return float(np.linalg.norm(p - t, axis=-1).mean())


def jitter(values: np.ndarray) -> float:
    """Mean absolute second difference over time: high for shaky, low for smooth signals. values: [T, ...]."""
    v = np.asarray(values, np.float64)
    if len(v) < 3:
        return 0.0
    return float(np.abs(v[2:] - 2 * v[1:-1] + v[:-2]).mean())
