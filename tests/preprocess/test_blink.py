"""Blink step: eye aspect ratio -> AU45 on OpenFace's scale, checked on real clips with known blinks."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from ernerf.io.layout import SubjectLayout
from ernerf.preprocess.base import StepContext
from ernerf.preprocess.blink import EYES, au45_from_ear, eye_aspect_ratio

CLIPS = ["train/trump_10s.mp4", "train/hdtf_aoc_8s.mp4"]


def blink_subject(prepare_subject, clip: str) -> SubjectLayout:
    """Subject with landmarks from the real pipeline, then the configured blink step (the pipeline's folder up to
    blink: shared by the test run, read only)."""
    return SubjectLayout(prepare_subject(clip, upto="blink"))


def read_au45(layout: SubjectLayout) -> np.ndarray:
    with open(layout.au) as f:
        rows = list(csv.DictReader(f))  # plain comma split, as pandas does: keys keep the leading space
    return np.array([float(r[" AU45_r"]) for r in rows])


def test_lid_gap_drives_the_ratio() -> None:
    mesh = np.zeros((2, 478, 3), np.float32)
    for eye in EYES.values():
        mesh[:, eye["corners"][1], 0] = 30.0  # eye 30 px wide
    for gap, frame in ((9.0, 0), (3.0, 1)):
        for eye in EYES.values():
            mesh[frame, list(eye["upper"]), 1] = -gap / 2
            mesh[frame, list(eye["lower"]), 1] = gap / 2
    assert np.allclose(eye_aspect_ratio(mesh), [0.3, 0.1])


def test_au45_scale() -> None:
    ear = np.array([0.3] * 18 + [0.045, 0.15])
    au = au45_from_ear(ear, closed_ratio=0.15)
    assert au[0] == 0.0 and au[-2] == pytest.approx(5.0) and au[-1] == pytest.approx(5.0 * 0.5 / 0.85)


@pytest.mark.parametrize("clip", CLIPS)
def test_real_blinks_are_peaks(prepare_subject, clip: str) -> None:
    layout = blink_subject(prepare_subject, clip)
    header = layout.au.read_text().splitlines()[0]
    assert header == "frame, timestamp, confidence, success, AU45_r"
    au = read_au45(layout)
    assert len(au) == StepContext(layout=layout).num_frames
    assert au.std() > 0.3 and au.min() >= 0 and au.max() <= 5
    peaks = [i for i in range(1, len(au) - 1) if au[i] >= 3.0 and au[i] >= au[i - 1] and au[i] >= au[i + 1]]
    assert peaks, "no blink found"
    assert np.median(au) < 1.5  # most frames are open-eyed


@pytest.mark.parametrize("clip, closed, opened", [
    ("train/trump_10s.mp4", [32, 33, 94, 95], [40, 50, 60, 150]),  # confirmed by eye on the crops
    ("train/hdtf_aoc_8s.mp4", [10, 11, 34, 35], [0, 5, 48, 70]),
])
def test_closed_eyes_score_higher_than_open(prepare_subject, clip: str, closed: list[int], opened: list[int]) -> None:
    au = read_au45(blink_subject(prepare_subject, clip))
    assert au[closed].min() > au[opened].max() + 1.5
