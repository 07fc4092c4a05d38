"""Matting: alpha.mp4 steadier than the raw mask at the silhouette, without lag; input.mp4 over the backdrop."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from hydra.utils import instantiate

from ernerf.errors import ErnerfError
from ernerf.io.layout import SubjectLayout
from ernerf.io.video import iter_frames, probe
from ernerf.preprocess import segmentation as seg
from ernerf.preprocess.matting import FlickerMeter, MattingStep, TemporalMatte, target_background
from tests.conftest import compose
from tests.io.test_video import x264_options

TRAIN_CLIPS = ["train/trump_10s.mp4", "train/hdtf_aoc_8s.mp4"]


@pytest.fixture(scope="module", params=TRAIN_CLIPS)
def subject(request, prepare_subject) -> SubjectLayout:
    return SubjectLayout(prepare_subject(request.param, upto="matting"))


def test_videos_are_512_25fps_one_frame_per_crop(subject: SubjectLayout) -> None:
    n = json.loads(subject.meta.read_text())["num_frames"]
    for path in (subject.alpha_video, subject.matted_video):
        info = probe(path)
        assert (info.width, info.height, round(info.fps), info.num_frames) == (512, 512, 25, n)
        assert "subme=1" in x264_options(path)  # the configured preset, superfast: only people watch these


def test_alpha_is_steadier_than_the_raw_mask_at_the_silhouette(subject: SubjectLayout) -> None:
    segmenter, meter = seg.PersonSegmenter(), FlickerMeter()
    mesh = np.load(subject.mesh)
    for i, alpha in enumerate(iter_frames(subject.alpha_video)):
        raw = segmenter(seg.read_rgb(subject.ori_img(i)))
        alpha = alpha[..., 0].astype(np.float32) / 255.0
        meter.update(raw, raw=raw, alpha=alpha)
        if i % 25 == 0:  # and it is still a person matte: face opaque, top corners clear
            x, y = np.round(mesh[i, :, :2].mean(0)).astype(int)
            assert alpha[y - 20:y + 20, x - 20:x + 20].min() > 0.9
            assert alpha[:16, :16].max() < 0.1 and alpha[:16, -16:].max() < 0.1
    flicker = meter.result()
    assert flicker["alpha"] < 0.75 * flicker["raw"], flicker


def test_matted_video_shows_the_backdrop_where_alpha_is_zero(subject: SubjectLayout) -> None:
    alpha = next(iter_frames(subject.alpha_video))[..., 0]
    matted = next(iter_frames(subject.matted_video)).astype(int)
    frame = seg.read_rgb(subject.ori_img(0)).astype(int)
    clear, solid = alpha < 3, alpha > 252
    assert clear.mean() > 0.1 and solid.mean() > 0.2
    assert np.abs(matted[clear] - 255).mean() < 4  # default backdrop: white
    assert np.abs(matted[solid] - frame[solid]).mean() < 4


def _square_frames(xs: list[int], size: int = 64) -> list[np.ndarray]:
    frames = []
    for x in xs:
        f = np.full((size, size, 3), 30, np.uint8)
        f[16:48, x:x + 20] = 220
        frames.append(f)
    return frames


def test_temporal_matte_follows_motion_without_lag() -> None:
    matte = TemporalMatte()
    xs = [4, 4, 4, 12, 20, 28, 36, 40]
    for f in _square_frames(xs):
        truth = (f[..., 0] > 100).astype(np.float32)
        alpha = matte(f, truth)
    assert np.abs(alpha - truth).mean() < 0.01  # where it moved, the image changed: the new mask wins at once


def test_temporal_matte_damps_flicker_on_a_still_image() -> None:
    rng = np.random.default_rng(0)
    (frame,) = _square_frames([20])
    truth = (frame[..., 0] > 100).astype(np.float32)
    matte, meter = TemporalMatte(), FlickerMeter(band_px=3)
    for _ in range(30):
        edge_noise = rng.uniform(-0.5, 0.5, truth.shape).astype(np.float32)
        raw = np.clip(truth + edge_noise * (np.abs(np.gradient(truth)[1]) + np.abs(np.gradient(truth)[0]) > 0), 0, 1)
        meter.update(truth, raw=raw, alpha=matte(frame, raw))
    flicker = meter.result()
    assert flicker["alpha"] < 0.5 * flicker["raw"], flicker


def test_backdrop_from_colour_or_image_and_errors_name_the_key(tmp_path) -> None:
    assert (target_background([0, 255, 0], (4, 6)) == (0, 255, 0)).all()
    img = np.zeros((10, 20, 3), np.uint8)
    img[:, 10:] = (0, 0, 255)  # BGR red on the right half
    cv2.imwrite(str(tmp_path / "bg.png"), img)
    back = target_background(str(tmp_path / "bg.png"), (8, 8))
    assert back.shape == (8, 8, 3) and tuple(back[0, -1]) == (255, 0, 0) and tuple(back[0, 0]) == (0, 0, 0)
    with pytest.raises(ErnerfError, match="preprocess.steps.matting.background"):
        target_background(str(tmp_path / "missing.png"), (8, 8))
    with pytest.raises(ErnerfError, match="preprocess.steps.matting.background"):
        MattingStep(background=[300, 0, 0])
    cfg = compose("preprocess", ["subject=test", "preprocess.steps.matting.background=[0,0,255]"])
    assert instantiate(cfg.preprocess.steps.matting).background == [0, 0, 255]


def test_masks_cached_by_parsing_give_the_matte_of_a_fresh_segmentation(prepare_subject, tmp_path) -> None:
    from ernerf.preprocess.matting import _Chunk, _segment_chunk

    layout = SubjectLayout(prepare_subject("train/trump_10s.mp4", upto="landmarks"))
    frames, mesh = range(10, 16), np.load(layout.mesh)[10:16]
    segmenter = seg.PersonSegmenter()
    cache = seg.MaskCache(tmp_path / "cache")
    cache.folder.mkdir()
    cache.write(frames, np.stack([segmenter(seg.read_rgb(layout.ori_img(i))) for i in frames]))
    cached = _segment_chunk(_Chunk(frames, layout.ori_imgs, mesh, 6, 1e-3, cache.folder))
    fresh = _segment_chunk(_Chunk(frames, layout.ori_imgs, mesh, 6, 1e-3, tmp_path / "empty"))
    for a, b in zip(cached, fresh):  # raw masks, refined mattes: the same up to the uint8 rounding
        assert a.shape == (6, 512, 512) and np.abs(a.astype(int) - b.astype(int)).max() <= 1


def _reference_matte(frames: list[np.ndarray], masks: list[np.ndarray], ema_min: float = 0.15,
                     motion_scale: float = 20.0) -> list[np.ndarray]:
    """The EMA written out plainly in float32 (grey frames as floats, np.clip): what TemporalMatte must equal."""
    state, prev, out = None, None, []
    for rgb, mask in zip(frames, masks):
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
        if state is None:
            state = mask
        else:
            motion = cv2.blur(cv2.absdiff(grey, prev), (9, 9))
            rate = np.clip(ema_min + motion * (1.0 / motion_scale), ema_min, 1.0)
            state = state + rate * (mask - state)
        prev = grey
        out.append(state)
    return out


def test_temporal_matte_equals_the_plain_float_ema_bit_for_bit() -> None:
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (48, 40, 3), dtype=np.uint8) for _ in range(6)]
    frames[3] = frames[2]  # a still frame: the rate stays at ema_min
    masks = [rng.random((48, 40), dtype=np.float32) for _ in frames]
    matte = TemporalMatte()
    got = [matte(f, m).copy() for f, m in zip(frames, masks)]
    for a, b in zip(got, _reference_matte(frames, masks)):
        assert a.dtype == np.float32 and np.array_equal(a, b)


def test_flicker_meter_gives_the_same_figure_for_uint8_and_float_masks() -> None:
    rng = np.random.default_rng(2)
    masks8 = []
    for x in (10, 11, 13, 12):  # a moving soft-edged square
        m = np.zeros((64, 64), np.float32)
        m[20:44, x:x + 24] = 1.0
        masks8.append(seg.mask_to_u8(np.clip(cv2.blur(m, (5, 5)) + rng.normal(0, 0.05, m.shape), 0, 1)))
    as_u8, as_float = FlickerMeter(band_px=3), FlickerMeter(band_px=3)
    for m8 in masks8:
        as_u8.update(m8, raw=m8)
        as_float.update(m8.astype(np.float32) / 255.0, raw=m8.astype(np.float32) / 255.0)
    u8, f = as_u8.result()["raw"], as_float.result()["raw"]
    assert u8 > 0.01 and u8 == pytest.approx(f, rel=1e-6)

