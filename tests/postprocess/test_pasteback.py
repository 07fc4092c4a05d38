"""Paste-back on real frames: ground truth returns the original, changes stay inside the mask, edges are soft."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from ernerf.errors import ErnerfError
from ernerf.io.layout import SubjectLayout
from ernerf.io.video import iter_frames
from ernerf.postprocess.pasteback import (HEAD_BGR, SCHEMES, HeadBox, PasteBack, crop_frame, feather_alpha,
                                          parsing_mask)
from tests.postprocess.mini_subject import BOX, face_points, parsing_bgr

SHIFT = 60  # grey levels added by the "recoloured" render


@pytest.fixture(scope="module")
def frame_and_crop(mini_subject):
    frame = next(iter_frames(mini_subject.video))
    crop = cv2.cvtColor(cv2.imread(str(mini_subject.ori_img(0))), cv2.COLOR_BGR2RGB)
    return frame, crop


def paste(scheme: str, frame: np.ndarray, crop: np.ndarray, blend: str = "feather") -> tuple[np.ndarray, np.ndarray]:
    pb = PasteBack(scheme, blend=blend, feather_px=16, dilate_px=8)
    alpha = pb.alpha(parsing_bgr(), face_points()[:, :2])
    return pb.paste(frame, crop, alpha, BOX), alpha


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0**2 / max(mse, 1e-12))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_ground_truth_crop_gives_original_frame(scheme, frame_and_crop):
    frame, crop = frame_and_crop
    out, _ = paste(scheme, frame, crop)
    assert out.shape == frame.shape
    assert psnr(out, frame) > 38  # jpeg q95 + 440->512->440 resampling only


@pytest.mark.parametrize("scheme", SCHEMES)
def test_recoloured_crop_changes_only_masked_pixels(scheme, frame_and_crop):
    frame, crop = frame_and_crop
    out, alpha = paste(scheme, frame, np.clip(crop.astype(int) + SHIFT, 0, 255).astype(np.uint8))
    changed = np.abs(out.astype(int) - frame.astype(int)).max(-1) > 12
    full_alpha = np.zeros(frame.shape[:2], np.float32)
    size = (BOX.width, BOX.height)
    full_alpha[0:BOX.y2, BOX.x1:BOX.x2] = cv2.resize(alpha, size)[-BOX.y1:, :]
    assert changed.any()
    assert not (changed & (full_alpha <= 0.0)).any()  # nothing changes where alpha is 0
    assert changed[full_alpha > 0.99].mean() > 0.9  # and the inside really takes the render


@pytest.mark.parametrize("scheme", SCHEMES)
def test_edges_are_smooth(scheme, frame_and_crop):
    frame = (frame_and_crop[0] * 0.7).astype(np.uint8)  # darkened so +SHIFT never clips at 255
    crop = crop_frame(frame, BOX, 512)
    shifted = crop + np.uint8(SHIFT)
    # the change the render brings is alpha * SHIFT: compare against pasting the unshifted crop
    diff = paste(scheme, frame, shifted)[0].astype(np.float32) - paste(scheme, frame, crop)[0].astype(np.float32)
    steps = max(np.abs(np.diff(diff, axis=0)).max(), np.abs(np.diff(diff, axis=1)).max())
    # smoothstep over 16 crop px (= 13.75 frame px) rises at most 1.5 / 13.75 of SHIFT per pixel
    assert steps <= 1.5 / 13.75 * SHIFT + 2
    pb = PasteBack(scheme, feather_px=0.01)
    hard = pb.alpha(parsing_bgr(), face_points()[:, :2])
    hard_diff = pb.paste(frame, shifted, hard, BOX).astype(np.float32) - pb.paste(frame, crop, hard, BOX)
    assert np.abs(np.diff(hard_diff, axis=1)).max() > 0.8 * SHIFT  # a hard paste does show the step


def test_schemes_cover_nested_regions(frame_and_crop):
    box, face, face_neck = (PasteBack(s).region(parsing_bgr(), face_points()[:, :2]) for s in SCHEMES)
    assert face.sum() < face_neck.sum() < box.sum()
    assert not (face & ~face_neck).any()


def test_seamless_blend_stays_in_mask_and_matches_ground_truth(frame_and_crop):
    frame, crop = frame_and_crop
    out, alpha = paste("face_neck", frame, crop, blend="seamless")
    assert psnr(out, frame) > 35
    shifted, _ = paste("face_neck", frame, np.clip(crop.astype(int) + SHIFT, 0, 255).astype(np.uint8), "seamless")
    # Poisson blending keeps the frame's own colours at the mask border, so a uniform shift all but vanishes
    assert np.abs(shifted.astype(int) - frame.astype(int)).mean() < 5


def test_crop_past_frame_edge_is_padded(frame_and_crop):
    frame, _ = frame_and_crop
    crop = crop_frame(frame, BOX, 512)
    rows_outside = round(-BOX.y1 * 512 / BOX.height)  # the box starts 30 px above the frame
    assert np.abs(crop[: rows_outside - 2].astype(int) - crop[rows_outside + 2].astype(int)).max() < 40


def test_feather_alpha_is_zero_outside_and_one_deep_inside():
    mask = np.zeros((64, 64), bool)
    mask[16:48, 16:48] = True
    alpha = feather_alpha(mask, 8)
    assert alpha[~mask].max() == 0 and alpha[32, 32] == 1.0
    assert np.all(np.diff(alpha[32, 16:33]) >= 0)  # rises monotonically from the border inwards


def test_bad_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(ErnerfError, match="scheme"):
        PasteBack("hair")
    with pytest.raises(ErnerfError, match="parsing"):
        PasteBack("face_neck").alpha(None, None)
    with pytest.raises(ErnerfError, match="mesh"):
        PasteBack("face").alpha(parsing_bgr(), None)
    with pytest.raises(ErnerfError, match="headbox"):
        HeadBox.load(tmp_path / "head_bbox.json")
    with pytest.raises(ErnerfError, match="outside"):
        PasteBack("box").paste(np.zeros((64, 64, 3), np.uint8), np.zeros((512, 512, 3), np.uint8),
                               np.ones((512, 512), np.float32), HeadBox(100, 100, 200, 200))


@pytest.mark.slow
def test_schemes_on_the_preprocessed_subject(prepare_subject):
    """Real head box, parsing and face mesh from the pipeline: the face scheme holds the mouth, not the hair."""
    layout = SubjectLayout(prepare_subject("train/trump_10s.mp4", upto="parsing"))
    i = 60
    frame = next(iter_frames(layout.video, start=i))
    crop = cv2.cvtColor(cv2.imread(str(layout.ori_img(i))), cv2.COLOR_BGR2RGB)
    parsing, mesh = cv2.imread(str(layout.parsing(i))), np.load(layout.mesh)[i, :, :2]
    box = HeadBox.load(layout.head_bbox)
    alphas = {s: PasteBack(s).alpha(parsing, mesh) for s in SCHEMES}
    for scheme, alpha in alphas.items():
        assert psnr(PasteBack(scheme).paste(frame, crop, alpha, box), frame) > 38
    lips = np.round(mesh[[13, 14, 61, 291]]).astype(int)  # mediapipe inner-lip and mouth-corner points
    assert (alphas["face"][lips[:, 1], lips[:, 0]] == 1.0).all()
    hair = parsing_mask(parsing, (HEAD_BGR,)) & (np.arange(512)[:, None] < mesh[:, 1].min() - 20)
    assert hair.sum() > 1000 and alphas["face"][hair].max() == 0.0  # hair above the face is left original
    assert alphas["face_neck"][hair].mean() > 0.5


def reference_paste(frame: np.ndarray, crop: np.ndarray, alpha: np.ndarray, box: HeadBox) -> np.ndarray:
    """The plain numpy blend over the whole box (what PasteBack.paste computed before it was optimised)."""
    h, w = frame.shape[:2]
    fx1, fy1, fx2, fy2 = max(box.x1, 0), max(box.y1, 0), min(box.x2, w), min(box.y2, h)
    size = (box.width, box.height)
    patch = cv2.resize(crop, size, interpolation=cv2.INTER_AREA if size[0] < 512 else cv2.INTER_CUBIC)
    a = cv2.resize(alpha, size, interpolation=cv2.INTER_AREA if size[0] < 512 else cv2.INTER_CUBIC)
    inside = (slice(fy1 - box.y1, fy2 - box.y1), slice(fx1 - box.x1, fx2 - box.x1))
    patch, a = patch[inside], a[inside].clip(0.0, 1.0)
    out = frame.copy()
    region = out[fy1:fy2, fx1:fx2].astype(np.float32)
    out[fy1:fy2, fx1:fx2] = np.clip(region + a[..., None] * (patch.astype(np.float32) - region) + 0.5, 0, 255)
    return out


@pytest.mark.parametrize("seed", range(4))
def test_paste_equals_the_plain_numpy_blend_bit_for_bit(seed, frame_and_crop):
    """Soft, hard, out-of-range, mostly-empty and float64 alphas; boxes inside, across and over the frame edges."""
    rng = np.random.default_rng(seed)
    frame, crop = frame_and_crop
    alphas = [PasteBack(s).alpha(parsing_bgr(), face_points()[:, :2]) for s in SCHEMES]
    alphas += [rng.uniform(-0.3, 1.3, (512, 512)).astype(np.float32), np.zeros((512, 512), np.float32),
               (rng.uniform(0, 1, (512, 512)) > 0.5).astype(np.float64)]
    alphas[-2][300:310, 100:120] = 0.5
    boxes = [BOX, HeadBox(-100, 200, 500, 800), HeadBox(40, 40, 240, 240), HeadBox(-50, -50, 600, 600)]
    for alpha in alphas:
        for box in boxes:
            expected = reference_paste(frame, crop, alpha, box)
            assert np.array_equal(PasteBack("box").paste(frame, crop, alpha, box), expected)


def test_parsing_mask_equals_the_per_channel_distance_rule():
    rng = np.random.default_rng(0)
    parsing = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)  # every distance from the colours, 63 and 64 too
    for classes in [(HEAD_BGR,), ((255, 0, 0), (0, 255, 0)), ((12, 200, 99),)]:
        expected = np.zeros((128, 128), bool)
        for colour in classes:
            expected |= np.all(np.abs(parsing.astype(np.int16) - colour) < 64, axis=-1)
        assert np.array_equal(parsing_mask(parsing, classes), expected)
