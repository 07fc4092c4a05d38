"""Metrics on synthetic cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from ernerf.metrics.image import PSNR_CAP, psnr, ssim, weighted_psnr
from ernerf.metrics.lipsync import audio_energy, correlation, jitter, landmark_distance, mouth_opening


def test_identical_images_give_capped_psnr_and_unit_ssim() -> None:
    img = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    assert psnr(img, img) == PSNR_CAP
    assert ssim(img, img) == pytest.approx(1.0, abs=1e-6)


def test_psnr_of_known_noise_level() -> None:
    a = np.full((32, 32, 3), 0.5, np.float32)
    b = a + 0.1  # mse 0.01 -> 20 dB
    assert psnr(b, a) == pytest.approx(20.0, abs=1e-3)
    mask = np.zeros((32, 32), bool)
    mask[:8] = True
    c = a.copy()
    c[8:] += 0.3  # outside the mask
    assert psnr(c, a, mask=mask) == PSNR_CAP


def test_lmd_zero_for_identical_and_equal_to_known_shift() -> None:
    pts = np.random.default_rng(1).normal(size=(5, 68, 2)) * 20 + 256
    assert landmark_distance(pts, pts) == 0.0
    moved = pts.copy()
    moved[:, 48:68] += np.array([3.0, 4.0])  # every mouth point 5 px away
    assert landmark_distance(moved, pts, range(48, 68), align_mean=False) == pytest.approx(5.0)
    # a rigid shift of the whole mouth is not a shape error once centred
    assert landmark_distance(moved, pts, range(48, 68), align_mean=True) == pytest.approx(0.0, abs=1e-9)


def test_mouth_opening_follows_lip_gap() -> None:
    pts = np.zeros((3, 478, 2))
    pts[:, 33] = [200, 200]
    pts[:, 263] = [300, 200]  # eye corners 100 px apart
    for t, gap in enumerate([0.0, 10.0, 20.0]):
        for up, lo in ((13, 14), (82, 87), (312, 317)):
            pts[t, up] = [250, 300]
            pts[t, lo] = [250, 300 + gap]
    np.testing.assert_allclose(mouth_opening(pts), [0.0, 0.1, 0.2])


def test_correlation_high_for_following_signal_low_for_shuffled() -> None:
    rng = np.random.default_rng(2)
    energy = np.abs(np.convolve(rng.normal(size=300), np.ones(5) / 5, mode="same"))
    mouth = np.roll(energy, 1) * 3 + rng.normal(scale=0.01, size=300)
    assert correlation(mouth, energy, max_lag=2) > 0.9
    assert abs(correlation(rng.permutation(mouth), energy, max_lag=2)) < 0.3


def test_audio_energy_and_jitter() -> None:
    sr = 16000
    wav = np.zeros(sr)  # 1 s, loud only in frame 10
    wav[10 * 640: 11 * 640] = 0.5
    e = audio_energy(wav, sr, 25)
    assert e.argmax() == 10 and e[10] == pytest.approx(0.5)
    assert jitter(np.linspace(0, 1, 50)) == pytest.approx(0.0, abs=1e-12)
    assert jitter(np.tile([0.0, 1.0], 25)) == pytest.approx(2.0)


def test_weighted_psnr_weighs_each_pixels_squared_error() -> None:
    truths = np.zeros((1, 2, 2, 3), np.uint8)
    renders = truths.copy()
    renders[0, 0, 0] = 51  # 0.2 off
    renders[0, 1, 1] = 102  # 0.4 off
    weights = np.array([[[1.0, 0.0], [0.0, 0.5]]])
    expected = -10 * np.log10((1.0 * 0.2**2 + 0.5 * 0.4**2) / 1.5)
    assert np.isclose(weighted_psnr(renders, truths, weights), expected, rtol=1e-9)
    assert weighted_psnr(renders, truths, np.array([[[0.0, 1.0], [1.0, 0.0]]])) >= 99  # the capped PSNR
