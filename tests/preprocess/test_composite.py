"""Composite: gt_imgs keep the person and take the plate elsewhere; torso_imgs hold torso + neck only."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from ernerf.io.layout import SubjectLayout
from ernerf.preprocess import segmentation as seg
from ernerf.preprocess.composite import (FILL_DARKEN, FILL_GAP_PX, NECK_FILL_PX, TORSO_FILL_PX, fill_behind_head,
                                         ground_truth, torso_rgba)
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


def test_torso_rgba_is_opaque_on_torso_and_neck_and_just_behind_the_chin(subject: SubjectLayout) -> None:
    n = json.loads(subject.meta.read_text())["num_frames"]
    filled_frames = 0
    for i in range(0, n, 25):
        labels = read_parsing(subject.parsing(i))
        rgba = cv2.imread(str(subject.torso(i)), cv2.IMREAD_UNCHANGED)
        assert rgba.shape == (512, 512, 4) and rgba.dtype == np.uint8
        alpha = rgba[..., 3]
        assert (alpha[labels == BACKGROUND] == 0).all()
        assert (alpha[(labels == TORSO) | (labels == NECK)] == 255).all()
        frame = seg.read_rgb(subject.ori_img(i))
        body = np.isin(labels, [TORSO, NECK])
        assert np.array_equal(rgba[..., 2::-1][body], frame[body])  # PNG is lossless: the frame's own pixels
        # behind the head: a strip above the neck and torso, no more than NECK_FILL_PX pixels in any column, the upper
        # head (forehead, hair) left transparent
        filled = (labels == HEAD) & (alpha == 255)
        if filled.any():
            filled_frames += 1
            assert filled.sum(0).max() <= NECK_FILL_PX
            head_rows = np.nonzero((labels == HEAD).any(1))[0]
            assert np.nonzero(filled.any(1))[0].min() > (head_rows.min() + head_rows.max()) // 2
        # and bit for bit what the step composed, whatever zlib level wrote it (conf: composite.png_level)
        assert np.array_equal(cv2.cvtColor(rgba, cv2.COLOR_BGRA2RGBA),
                              torso_rgba(frame, labels, NECK_FILL_PX, TORSO_FILL_PX))
    assert filled_frames > 0  # the neck sits under the chin on these clips


def test_composites_on_an_analytic_frame() -> None:
    frame = np.full((4, 4, 3), 100, np.uint8)
    plate = np.full((4, 4, 3), 7, np.uint8)
    labels = np.array([[0, 0, 1, 1], [0, 1, 1, 2], [3, 3, 2, 2], [3, 3, 3, 0]], np.uint8)
    gt = ground_truth(frame, labels, plate)
    assert (gt[labels == BACKGROUND] == 7).all() and (gt[labels != BACKGROUND] == 100).all()
    rgba = torso_rgba(frame, labels)
    assert (rgba[..., 3] == np.isin(labels, [NECK, TORSO]) * 255).all()
    assert (rgba[labels == HEAD, :3] == 0).all() and (rgba[labels == TORSO, :3] == 100).all()


def test_the_neck_is_continued_up_behind_the_head_and_no_further() -> None:
    """Columns whose neck starts under the head get the neck's colour (from a few pixels below its top) upward over
    the head, darkening, at most `length` pixels; a column whose neck meets the background, and the background
    itself, get nothing."""
    labels = np.zeros((12, 5), np.uint8)
    labels[0:8, 0:4] = HEAD
    labels[8:12, 0:3] = NECK  # columns 0-2: the neck under the head; column 3: head only; column 4: background
    labels[5:12, 4] = NECK  # column 4: the neck's top meets the background
    frame = np.zeros((12, 5, 3), np.uint8)
    frame[8:12] = [200, 150, 100]
    frame[8, :] = [10, 10, 10]  # the chin's shadow on the neck's top row: not the colour continued
    rgba = torso_rgba(frame, labels, neck_fill_px=3)
    filled = (labels == HEAD) & (rgba[..., 3] == 255)
    expected = np.zeros_like(filled)
    expected[5:8, 0:3] = True  # three rows up from the neck's top, in the neck's columns
    assert np.array_equal(filled, expected)
    for step, row in enumerate((7, 6, 5), start=1):  # the colour below the shadow, darker with each row up
        want = np.round(np.array([200, 150, 100]) * FILL_DARKEN**step)
        assert np.array_equal(rgba[row, 1, :3], want.astype(np.uint8))
    assert (rgba[labels == BACKGROUND, 3] == 0).all() and (rgba[:5, :, 3] == 0).all()
    assert np.array_equal(torso_rgba(frame, labels), torso_rgba(frame, labels, 0, 0))
    assert (torso_rgba(frame, labels)[labels == HEAD, 3] == 0).all()  # fill off: the head stays transparent
    colours, (rows, cols) = fill_behind_head(frame, labels == NECK, labels == HEAD, length=20)
    assert rows.min() == 0 and len(rows) == 3 * 8  # stops at the image's top edge


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
