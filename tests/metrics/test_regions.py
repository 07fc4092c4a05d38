"""The error split by region: labels from parsing and mesh, shares that add up, PSNR per region."""

from __future__ import annotations

import numpy as np
import pytest

from ernerf.metrics.regions import BACKGROUND, FACE, HAIR, NECK, TORSO, region_errors, region_labels


def parsing_map() -> np.ndarray:
    """A 40x40 map: head (1) in the top middle, neck (2) below it, torso (3) at the bottom, background (0) around."""
    parsing = np.zeros((40, 40), np.int64)
    parsing[2:20, 10:30] = 1
    parsing[20:26, 16:24] = 2
    parsing[26:, 4:36] = 3
    return parsing


def test_the_mesh_hull_splits_the_head_into_face_and_hair() -> None:
    mesh = np.array([[14, 8], [26, 8], [26, 19], [14, 19]], np.float32)  # a face box inside the head
    labels = region_labels(parsing_map(), mesh)
    assert labels[12, 20] == FACE and labels[3, 11] == HAIR  # inside the hull / head corner outside it
    assert labels[22, 20] == NECK and labels[30, 5] == TORSO and labels[0, 0] == BACKGROUND
    assert not (labels == FACE)[parsing_map() != 1].any()  # the face never leaves the parsed head
    assert (region_labels(parsing_map(), None)[parsing_map() == 1] == HAIR).all()  # no mesh: all head is hair


def test_error_in_one_region_is_all_of_the_share_and_sets_its_psnr() -> None:
    labels = region_labels(parsing_map(), np.array([[14, 8], [26, 8], [26, 19], [14, 19]], np.float32))
    truth = np.full((40, 40, 3), 128, np.uint8)
    render = truth.copy()
    render[labels == NECK] += 51  # an error of 0.2 on every neck pixel
    values, _ = region_errors([render, truth], [truth, truth], [labels, labels])
    assert values["region_share_neck"] == pytest.approx(1.0)
    assert sum(values[f"region_share_{r}"] for r in ("face", "hair", "neck", "torso", "background")) == pytest.approx(1)
    # half the frames carry the error: MSE 0.04 / 2 on the neck
    assert values["region_psnr_neck"] == pytest.approx(10 * np.log10(1 / 0.02), abs=0.01)
    assert values["region_psnr_face"] == pytest.approx(100.0)  # error-free regions sit at the floor's 100 dB


def test_mean_error_map_is_the_rms_over_frames() -> None:
    truth = np.zeros((4, 4, 3), np.uint8)
    a, b = truth.copy(), truth.copy()
    a[0, 0] = 255
    _, rms = region_errors([a, b], [truth, truth], [np.zeros((4, 4), np.uint8)] * 2)
    assert rms[0, 0] == pytest.approx(np.sqrt(0.5)) and rms[1:, 1:].max() == 0
