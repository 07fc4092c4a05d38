"""Background plate: true background colours where the background is seen; unseen pixels filled."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from ernerf.errors import ErnerfError
from ernerf.io.layout import SubjectLayout
from ernerf.preprocess import segmentation as seg
from ernerf.preprocess.background import PlateAccumulator, sample_frames
from ernerf.preprocess.parsing import BACKGROUND, read_parsing

TRAIN_CLIPS = ["train/trump_10s.mp4", "train/hdtf_aoc_8s.mp4"]


@pytest.mark.parametrize("clip", TRAIN_CLIPS)
def test_plate_matches_the_background_where_frames_show_it(prepare_subject, clip: str) -> None:
    layout = SubjectLayout(prepare_subject(clip, upto="background"))
    plate = seg.read_rgb(layout.background).astype(np.float32)
    assert plate.shape == (512, 512, 3)
    n = json.loads(layout.meta.read_text())["num_frames"]
    errors = []
    for i in range(3, n, 20):  # not the sampled frames only
        background = read_parsing(layout.parsing(i)) == BACKGROUND
        # clear of the person by 20 px: the segmentation edge is not what is being tested
        clear = cv2.distanceTransform(background.astype(np.uint8), cv2.DIST_L2, 5) > 20
        frame = seg.read_rgb(layout.ori_img(i)).astype(np.float32)
        errors.append(np.abs(frame - plate)[clear].mean())
    assert np.median(errors) < 6.0, errors  # grey levels: JPEG noise and slight camera drift


@pytest.mark.parametrize("clip", TRAIN_CLIPS)
def test_accumulator_sums_what_the_plain_numpy_formula_sums_bit_for_bit(prepare_subject, clip: str) -> None:
    layout = SubjectLayout(prepare_subject(clip, upto="background"))
    acc, total, weight = PlateAccumulator(margin_px=6.0), np.zeros((512, 512, 3)), np.zeros((512, 512))
    for i in sample_frames(json.loads(layout.meta.read_text())["num_frames"], 40):
        rgb, background = seg.read_rgb(layout.ori_img(i)), read_parsing(layout.parsing(i)) == BACKGROUND
        acc.add(rgb, background)
        dist = cv2.distanceTransform(background.astype(np.uint8), cv2.DIST_L2, 5)
        w = np.clip((dist - 6.0) / 6.0, 0.0, 1.0)
        total += w[..., None] * rgb  # float32 products, a float64 sum
        weight += w
    assert np.array_equal(acc._sum, total) and np.array_equal(acc._weight, weight)


def test_accumulator_recovers_a_background_behind_a_moving_occluder() -> None:
    rng = np.random.default_rng(0)
    background = np.zeros((64, 96, 3), np.uint8)
    background[:, :48] = (200, 40, 30)
    background[:, 48:] = (20, 90, 220)
    acc = PlateAccumulator(margin_px=2)
    for x in range(0, 60, 6):  # a dark box sweeping across the left and middle
        frame = np.clip(background + rng.normal(0, 3, background.shape), 0, 255).astype(np.uint8)
        person = np.zeros((64, 96), bool)
        person[10:64, x:x + 30] = True
        frame[person] = (10, 10, 10)
        acc.add(frame, ~person)
    plate = acc.plate(inpaint_radius=3).astype(np.float32)
    assert np.abs(plate - background)[acc.known].mean() < 2.0  # noise averages out
    # every pixel was uncovered at some point except the box's bottom rows near x in [30, 36)
    assert acc.known.mean() > 0.9
    assert not (plate == (10, 10, 10)).all(-1).any()  # the occluder never leaks into the plate


def test_never_seen_pixels_are_inpainted_from_their_surroundings() -> None:
    background = np.full((40, 40, 3), (90, 160, 60), np.uint8)
    person = np.zeros((40, 40), bool)
    person[10:30, 10:30] = True  # a static occluder: its pixels are never background
    acc = PlateAccumulator(margin_px=1)
    for _ in range(3):
        frame = background.copy()
        frame[person] = 255
        acc.add(frame, ~person)
    plate = acc.plate(inpaint_radius=3).astype(np.float32)
    assert not acc.known[20, 20]
    assert np.abs(plate[15:25, 15:25] - background[15:25, 15:25]).max() <= 4  # Telea rounds by a few levels


def test_sample_frames_spreads_over_the_clip() -> None:
    assert sample_frames(5, 100) == [0, 1, 2, 3, 4]
    idx = sample_frames(1000, 10)
    assert len(idx) == 10 and idx[0] == 0 and idx[-1] == 999
    with pytest.raises(ErnerfError):
        sample_frames(0, 10)
