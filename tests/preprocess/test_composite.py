"""Composite: gt_imgs keep the person and take the plate elsewhere; torso_imgs hold torso + neck only."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from ernerf.io.layout import SubjectLayout
from ernerf.preprocess import segmentation as seg
from ernerf.preprocess.composite import ground_truth, torso_rgba
from ernerf.preprocess.parsing import BACKGROUND, HEAD, NECK, TORSO, read_parsing

TRAIN_CLIPS = ["train/trump_10s.mp4", "train/hdtf_aoc_8s.mp4"]


@pytest.fixture(scope="module", params=TRAIN_CLIPS)
def subject(request, prepare_subject) -> SubjectLayout:
    return SubjectLayout(prepare_subject(request.param, upto="composite"))


def _inner(mask: np.ndarray, px: int = 4) -> np.ndarray:
    # JPEG mixes colours across 8x8 blocks: compare away from label edges
    return cv2.erode(mask.astype(np.uint8), seg.disk(px)).astype(bool)


def test_gt_is_the_frame_on_the_person_and_the_plate_elsewhere(subject: SubjectLayout) -> None:
    n = json.loads(subject.meta.read_text())["num_frames"]
    assert len(list(subject.gt_dir.glob("*.jpg"))) == n and len(list(subject.torso_dir.glob("*.png"))) == n
    plate = seg.read_rgb(subject.background).astype(np.float32)
    for i in range(0, n, 25):
        labels = read_parsing(subject.parsing(i))
        gt = seg.read_rgb(subject.gt(i)).astype(np.float32)
        frame = seg.read_rgb(subject.ori_img(i)).astype(np.float32)
        person, background = _inner(labels != BACKGROUND), _inner(labels == BACKGROUND)
        assert np.abs(gt - frame)[person].mean() < 2.0  # only re-encoding noise
        assert np.abs(gt - plate)[background].mean() < 2.0


def test_torso_rgba_is_opaque_exactly_on_torso_and_neck(subject: SubjectLayout) -> None:
    n = json.loads(subject.meta.read_text())["num_frames"]
    for i in range(0, n, 25):
        labels = read_parsing(subject.parsing(i))
        rgba = cv2.imread(str(subject.torso(i)), cv2.IMREAD_UNCHANGED)
        assert rgba.shape == (512, 512, 4) and rgba.dtype == np.uint8
        alpha = rgba[..., 3]
        assert (alpha[labels == HEAD] == 0).all() and (alpha[labels == BACKGROUND] == 0).all()
        assert (alpha[(labels == TORSO) | (labels == NECK)] == 255).all()
        frame = seg.read_rgb(subject.ori_img(i))
        body = alpha == 255
        assert np.array_equal(rgba[..., 2::-1][body], frame[body])  # PNG is lossless: the frame's own pixels
        # and bit for bit what the step composed, whatever zlib level wrote it (conf: composite.png_level)
        assert np.array_equal(cv2.cvtColor(rgba, cv2.COLOR_BGRA2RGBA), torso_rgba(frame, labels))


def test_composites_on_an_analytic_frame() -> None:
    frame = np.full((4, 4, 3), 100, np.uint8)
    plate = np.full((4, 4, 3), 7, np.uint8)
    labels = np.array([[0, 0, 1, 1], [0, 1, 1, 2], [3, 3, 2, 2], [3, 3, 3, 0]], np.uint8)
    gt = ground_truth(frame, labels, plate)
    assert (gt[labels == BACKGROUND] == 7).all() and (gt[labels != BACKGROUND] == 100).all()
    rgba = torso_rgba(frame, labels)
    assert (rgba[..., 3] == np.isin(labels, [NECK, TORSO]) * 255).all()
    assert (rgba[labels == HEAD, :3] == 0).all() and (rgba[labels == TORSO, :3] == 100).all()


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_fast_png_round_trips_through_opencv(tmp_path, channels: int) -> None:
    from ernerf.io.png import write_png

    rng = np.random.default_rng(channels)
    shape = (37, 53) if channels == 1 else (37, 53, channels)
    image = rng.integers(0, 256, size=shape, dtype=np.uint8)
    image[10:20] = 200  # flat runs as well as noise
    write_png(tmp_path / "x.png", image)
    back = cv2.imread(str(tmp_path / "x.png"), cv2.IMREAD_UNCHANGED)
    expected = image if channels == 1 else image[..., [2, 1, 0, 3][:channels]]
    assert np.array_equal(back, expected)
