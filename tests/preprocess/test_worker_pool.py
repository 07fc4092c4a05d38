"""The shared worker pool: ordered results, and a dead worker fails the step instead of hanging it."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from ernerf.errors import ErnerfError
from ernerf.preprocess import segmentation as seg


def _square(x: int) -> int:
    return x * x


def _die_on_three(x: int) -> int:
    if x == 3:
        os.kill(os.getpid(), signal.SIGKILL)  # what the kernel's OOM killer does
    time.sleep(0.05)
    return x


def test_results_come_back_in_order() -> None:
    assert list(seg.map_ordered(_square, list(range(20)), workers=2, window=3)) == [x * x for x in range(20)]


def test_a_killed_worker_raises_instead_of_hanging() -> None:
    t0 = time.monotonic()
    with pytest.raises(ErnerfError, match="worker process died"):
        list(seg.map_ordered(_die_on_three, list(range(8)), workers=2))
    assert time.monotonic() - t0 < 60
    # the broken pool was dropped: the next step gets a fresh one
    assert list(seg.map_ordered(_square, [1, 2, 3], workers=2)) == [1, 4, 9]


def test_mask_cache_round_trips_and_covers_ranges(tmp_path) -> None:
    cache = seg.MaskCache(tmp_path / "cache" / "masks")
    cache.folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    masks = rng.random((10, 8, 6)).astype(np.float32)
    cache.write(range(0, 4), masks[:4])
    cache.write(range(4, 10), masks[4:])
    got = cache.read(range(2, 7))
    assert got.dtype == np.uint8 and got.shape == (5, 8, 6)
    assert np.abs(got / 255.0 - masks[2:7]).max() <= 0.5 / 255 + 1e-6
    assert cache.read(range(8, 12)) is None  # frames 10, 11 were never written
    cache.clear()
    assert cache.read(range(0, 4)) is None and not (tmp_path / "cache").exists()
