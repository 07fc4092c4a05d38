"""Headbox: one square, steady box around the head; 512x512 crops padded by edge replication."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import astuple
from pathlib import Path

import numpy as np
import pytest

from ernerf.io.layout import SubjectLayout
from ernerf.io.video import probe
from ernerf.preprocess.base import StepContext
from ernerf.preprocess.headbox import HeadboxStep, _fit_axis, _inside_fraction, crop_square, group_tracks
from ernerf.preprocess.ingest import IngestStep
from ernerf.preprocess.mediapipe_face import FaceBox, FaceDetector
from tests.conftest import shared_clip
from tests.io.test_video import x264_options

TRAIN_CLIPS = ["train/trump_10s.mp4", "train/hdtf_aoc_8s.mp4"]
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("clip", TRAIN_CLIPS)
def test_box_is_square_and_crops_hold_a_centred_steady_face(prepare_subject, clip: str) -> None:
    layout = SubjectLayout(prepare_subject(clip, upto="headbox"))
    box = json.loads(layout.head_bbox.read_text())
    side = box["x2"] - box["x1"]
    assert side == box["y2"] - box["y1"] and all(isinstance(box[k], int) for k in ("x1", "y1", "x2", "y2"))
    n = json.loads(layout.meta.read_text())["num_frames"]
    info = probe(layout.face_video)
    assert (info.width, info.height, info.fps, info.num_frames) == (512, 512, 25, n)
    assert "subme=1" in x264_options(layout.face_video)  # the configured preset, superfast: only people watch it
    assert len(list(layout.ori_imgs.glob("*.jpg"))) == n
    centres, sizes = [], []
    with FaceDetector() as det:
        for i in range(0, n, 10):
            faces = det.detect(_rgb(layout.ori_img(i)))
            assert faces, f"no face in crop {i}"
            centres.append(faces[0].center)
            sizes.append(faces[0].size)
    centres, sizes = np.array(centres), np.array(sizes)
    # the face sits in the middle, above the crop's lower third (neck and shoulders below it), and never leaves
    # the crop (tightly framed clips keep their own framing, so the face may sit a little below the centre)
    assert np.all(np.abs(centres[:, 0] - 256) < 80) and np.all((centres[:, 1] > 120) & (centres[:, 1] < 320))
    # face between 1/scale of the crop (scale 2.2 plus the motion margin) and 1/min_scale (these clips are framed
    # tightly, so the box is capped at the frame), constant: one box, no zoom jitter
    assert np.all((sizes > 512 / 3.2) & (sizes < 512 / 1.55)) and sizes.std() / sizes.mean() < 0.08
    # no invented pixels: the box stays inside the frame when the head core fits
    assert box["x1"] >= 0 and box["y1"] >= 0 and box["x2"] <= 512 and box["y2"] <= 512


def test_portrait_video_with_separate_audio(tmp_path: Path) -> None:
    ctx = StepContext(layout=SubjectLayout(tmp_path / "p"), video=shared_clip("edge/no_audio_track_portrait.mp4"),
                      audio=shared_clip("audio/radio31_8s.wav"))
    IngestStep().run(ctx)
    facts = HeadboxStep().run(ctx)
    box = json.loads(ctx.layout.head_bbox.read_text())
    assert box["x2"] - box["x1"] == box["y2"] - box["y1"] == facts["side"] >= 256
    # a portrait frame is narrower than the full head box: the box is capped at the frame's width (the head
    # core still fits), so no pixels are invented at the sides
    assert box["x1"] == 0 and box["x2"] == 720 and not facts["padded"]
    assert probe(ctx.layout.face_video).num_frames == ctx.num_frames


def test_crop_inside_frame_is_an_exact_slice() -> None:
    frame = np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)
    out = crop_square(frame, (50, 20, 178, 148), 128)
    assert np.array_equal(out, frame[20:148, 50:178])


def test_crop_outside_frame_replicates_edges() -> None:
    ramp = np.tile(np.arange(100, dtype=np.uint8)[None, :, None], (100, 1, 3))  # value = column
    out = crop_square(ramp, (-20, -10, 80, 90), 100)  # 20 px left of the frame
    assert np.all(out[:, :20] == 0)  # replicated first column
    assert np.array_equal(out[:, 20:], ramp[:100, :80])  # rows above the frame repeat row 0, same values
    big = crop_square(ramp, (-50, -50, 150, 150), 100)  # box twice the frame, scaled down to 100
    assert big.shape == (100, 100, 3) and big[:, :20].max() <= 1 and big[:, -20:].min() >= 98


def test_inside_fraction_is_the_covered_area() -> None:
    assert _inside_fraction((0, 0, 100, 100), 200, 200) == 1.0
    assert _inside_fraction((-50, 0, 50, 100), 200, 200) == 0.5
    assert _inside_fraction((-50, -50, 150, 150), 100, 100) == 0.25


def test_fit_axis_slides_inside_but_pads_when_too_big() -> None:
    assert _fit_axis(center=30, side=100, frame=500) == 0  # slid right, stays inside
    assert _fit_axis(center=480, side=100, frame=500) == 400
    assert _fit_axis(center=250, side=100, frame=500) == 200
    assert _fit_axis(center=250, side=700, frame=500) == -100  # larger than the frame: centred, padded


def test_tracks_link_the_same_person_and_keep_others_apart() -> None:
    big = [FaceBox(100 + k, 100, 300 + k, 300, 0.9) for k in range(10)]  # steady, 200 px
    small = [FaceBox(500, 100, 580, 180, 0.9) for _ in range(10)]  # another person, 80 px
    frames = [[b, s] for b, s in zip(big, small)]
    frames[3].append(FaceBox(10, 400, 40, 430, 0.6))  # a one-frame false detection
    tracks = sorted(group_tracks(frames), key=lambda t: -len(t.boxes))
    assert [len(t.boxes) for t in tracks] == [10, 10, 1]
    assert {round(t.size) for t in tracks[:2]} == {200, 80}


def _rgb(path: Path) -> np.ndarray:
    import cv2

    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def test_faces_detected_in_the_pool_are_those_detected_here_and_this_process_never_loads_mediapipe() -> None:
    """Both clips through one process's pool (one start of its workers), each compared with detection here."""
    import cv2

    from ernerf.io.video import iter_frames

    videos, stride = [shared_clip(c) for c in ("edge/no_audio_track_portrait.mp4", "train/hdtf_aoc_8s.mp4")], 20
    code = ("import json, sys; from dataclasses import astuple; from ernerf.preprocess.headbox import detect_faces; "
            f"faces = [detect_faces(v, {stride}, 0.5, workers=2) for v in {[str(v) for v in videos]!r}]; "
            "print(json.dumps(['mediapipe' in sys.modules, [[[astuple(b) for b in f] for f in c] for c in faces]]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    loaded, pooled = json.loads(out.stdout)
    assert not loaded and len(pooled) == len(videos)
    for video, from_pool in zip(videos, pooled):
        here = []
        with FaceDetector(model_selection=1, min_confidence=0.5) as det:  # the frame shrunk to 640 px, as the step does
            for frame in iter_frames(video, step=stride):
                s = 640 / max(frame.shape[:2])
                small = cv2.resize(frame, None, fx=s, fy=s, interpolation=cv2.INTER_LINEAR) if s < 1 else frame
                faces = det.detect(small)
                here.append([[b.x1 / s, b.y1 / s, b.x2 / s, b.y2 / s, b.score] if s < 1 else list(astuple(b))
                             for b in faces])
        assert len(from_pool) == len(here) > 5 and from_pool == here, video.name
