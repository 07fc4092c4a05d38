"""bench/torso_predictability.py: the pooled PSNR and the nearest-in-pose predictor, on analytic cases."""

from __future__ import annotations

import math

import numpy as np

from bench.torso_predictability import body_signal, nearest_mean, psnr


def test_psnr_pools_the_squared_error_over_the_masked_pixels_of_all_frames() -> None:
    images = np.zeros((2, 4, 4, 3), np.float32)
    masks = np.zeros((2, 4, 4), bool)
    masks[0, :2] = True  # 8 pixels off by 0.1
    masks[1, :, :1] = True  # 4 pixels off by 0.4
    predictions = [np.full((4, 4, 3), 0.1, np.float32), np.full((4, 4, 3), 0.4, np.float32)]
    expected = -10 * math.log10((8 * 0.1**2 + 4 * 0.4**2) / 12)
    assert math.isclose(psnr(predictions, images, masks), expected, rel_tol=1e-5)


def test_nearest_mean_averages_the_k_nearest_poses_and_skips_the_excluded_frames() -> None:
    poses = np.array([[0.0], [1.0], [2.0], [3.0], [10.0]])
    images = np.arange(5, dtype=np.float32)[:, None, None, None] * np.ones((5, 2, 2, 3), np.float32)
    assert np.allclose(nearest_mean(images, poses, np.array([2.1]), 1), 2.0)
    assert np.allclose(nearest_mean(images, poses, np.array([2.1]), 3), (1 + 2 + 3) / 3)
    # frame 2 and its neighbours in time (1-3) left out: its nearest poses are then frames 0 and 4
    assert np.allclose(nearest_mean(images, poses, np.array([2.0]), 2, slice(1, 4)), (0 + 4) / 2)


def test_a_still_torso_is_predicted_by_every_predictor(tmp_path, monkeypatch, capsys) -> None:
    """The synthetic subject's torso never moves: the train mean and the nearest frames both predict it (over 50 dB,
    JPEG's rounding aside), on validation and left-out training frames alike."""
    from bench import torso_predictability
    from tests.synthetic import write_synthetic_subject
    from tests.test_stages import add_torso

    root = write_synthetic_subject(tmp_path / "sphere", num_frames=12, size=32)
    add_torso(root)
    monkeypatch.setattr("sys.argv", ["torso_predictability.py", "--subject", str(root), "--downscale", "16",
                                     "--k", "1", "3", "--exclude", "1", "--every", "2"])
    torso_predictability.main()
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0].strip() for line in lines[1:]] == ["train mean", "1 nearest in head pose",
                                                                 "3 nearest in head pose", "1 nearest in body",
                                                                 "3 nearest in body"]
    figures = [float(word.rstrip(",")) for line in lines[1:] for word in line.split()[-3::2]]
    assert len(figures) == 10 and min(figures) > 35


def test_the_body_signal_follows_where_the_silhouette_sits() -> None:
    """A block moving down and widening: its centroid row, spread across and top edge grow with it; standardised."""
    masks = np.zeros((3, 16, 16), bool)
    for f in range(3):
        masks[f, 8 + f:, 4 - f:12 + f] = True  # over the middle third of the columns in every frame
    signal = body_signal(masks)
    assert signal.shape == (3, 5) and np.allclose(signal.mean(0), 0, atol=1e-9)
    cx, cy, sx, _, top = signal.T
    assert np.allclose(cx, 0, atol=1e-6)  # centred whatever its width
    assert (np.diff(cy) > 0).all() and (np.diff(sx) > 0).all() and (np.diff(top) > 0).all()
