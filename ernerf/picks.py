"""Evenly spaced picks of indices: the frames a report shows, a validation renders, a preprocessing step probes."""

from __future__ import annotations

import numpy as np


def evenly_spaced(num: int, count: int) -> np.ndarray:
    """Up to `count` distinct indices of range(num), evenly spaced, the first and the last included, ascending
    (all of them when `count >= num`; none when either is 0). # -> [min(count, num)] int64"""
    if num <= 0 or count <= 0:
        return np.zeros(0, dtype=np.int64)
    if count >= num:
        return np.arange(num, dtype=np.int64)
    return np.linspace(0, num - 1, count).round().astype(np.int64)
