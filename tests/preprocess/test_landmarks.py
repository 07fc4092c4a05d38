"""Landmarks: 478-point mesh and 68 iBUG points on the face, in the right order, gaps interpolated."""

from __future__ import annotations

import json


import numpy as np
import pytest

from ernerf.io.layout import SubjectLayout
from ernerf.io.video import run_ffmpeg
from ernerf.preprocess.base import StepContext
from ernerf.preprocess.headbox import HeadboxStep
from ernerf.preprocess.ingest import IngestStep
from ernerf.preprocess.landmarks import (IBUG68_FROM_MESH, LandmarksStep, interpolate_missing, mesh_frames,
                                        mesh_to_ibug68)
from ernerf.preprocess.mediapipe_face import FaceDetector
from tests.conftest import shared_clip

TRAIN_CLIPS = ["train/trump_10s.mp4", "train/hdtf_aoc_8s.mp4"]


@pytest.fixture(scope="module", params=TRAIN_CLIPS)
def subject(request, prepare_subject) -> SubjectLayout:
    return SubjectLayout(prepare_subject(request.param, upto="landmarks"))


def test_mesh_files_have_the_documented_shapes(subject: SubjectLayout) -> None:
    n = json.loads(subject.meta.read_text())["num_frames"]
    mesh, valid = np.load(subject.mesh), np.load(subject.mesh_valid)
    assert mesh.shape == (n, 478, 3) and mesh.dtype == np.float32
    assert valid.shape == (n,) and valid.dtype == bool and valid.mean() > 0.95
    assert np.isfinite(mesh).all()
    xy = mesh[..., :2]
    assert xy.min() > -20 and xy.max() < 532  # crop pixels
    # z uses x's pixel scale: a face's depth span is a sizeable fraction of its width, not ~1 (normalised)
    depth = np.ptp(mesh[..., 2], axis=1) / np.ptp(mesh[..., 0], axis=1)
    assert np.all((depth > 0.2) & (depth < 1.5))
    lms = np.loadtxt(subject.lms(n - 1))
    assert lms.shape == (68, 2) and np.allclose(lms, mesh_to_ibug68(mesh[n - 1]), atol=1e-3)


def test_landmarks_lie_inside_the_detected_face(subject: SubjectLayout) -> None:
    import cv2

    mesh = np.load(subject.mesh)
    with FaceDetector() as det:
        for i in range(0, len(mesh), 25):
            face = det.detect(cv2.imread(str(subject.ori_img(i)))[..., ::-1].copy())[0]
            lms = np.loadtxt(subject.lms(i))
            margin = 0.15 * face.size  # the detector's box stops at the brows' top and inside the jaw line
            inner = lms[17:]  # brows, nose, eyes, mouth
            assert np.all((inner[:, 0] > face.x1 - margin) & (inner[:, 0] < face.x2 + margin))
            assert np.all((inner[:, 1] > face.y1 - margin) & (inner[:, 1] < face.y2 + margin))


def test_ibug_order_is_anatomical(subject: SubjectLayout) -> None:
    lms = mesh_to_ibug68(np.load(subject.mesh))  # [N, 68, 2]
    x, y = lms[..., 0], lms[..., 1]
    eyes_y, mouth_y = y[:, 36:48].mean(1), y[:, 48:68].mean(1)
    brows_y, nose_tip_y = y[:, 17:27].mean(1), y[:, 30]
    assert np.all((brows_y < eyes_y) & (eyes_y < nose_tip_y) & (nose_tip_y < mouth_y) & (mouth_y < y[:, 8]))
    assert np.all(y[:, 8] == y[:, :17].max(1))  # chin is the jaw's lowest point
    # image-left before image-right: jaw ends, eye corners, mouth corners, nostrils
    for left, right in ((0, 16), (36, 39), (39, 42), (42, 45), (48, 54), (31, 35), (17, 26), (60, 64)):
        assert np.all(x[:, left] < x[:, right]), (left, right)
    # mirrored pairs straddle the nose line: on average (frontal clips) and every frame (head turns allowed)
    mid, width = x[:, 27:31].mean(1), x[:, 16] - x[:, 0]
    for left, right in ((0, 16), (4, 12), (36, 45), (48, 54)):
        off = np.abs((x[:, left] + x[:, right]) / 2 - mid) / width
        assert np.median(off) < 0.1 and off.max() < 0.2, (left, right)
    # lower lid below upper lid, lower lip below upper lip
    assert np.all(y[:, 41] > y[:, 37]) and np.all(y[:, 57] > y[:, 51]) and np.all(y[:, 66] >= y[:, 62] - 1)


def test_mapping_uses_distinct_mesh_vertices() -> None:
    assert IBUG68_FROM_MESH.shape == (68,) and len(set(IBUG68_FROM_MESH.tolist())) == 68
    assert IBUG68_FROM_MESH.max() < 468  # face vertices, not iris points


def test_missing_frames_are_linearly_interpolated() -> None:
    mesh = np.zeros((5, 478, 3), dtype=np.float32)
    mesh[0], mesh[3], mesh[4] = 0.0, 30.0, 40.0
    valid = np.array([True, False, False, True, True])
    filled = interpolate_missing(mesh, valid)
    assert np.allclose(filled[:, 0, 0], [0, 10, 20, 30, 40]) and filled.dtype == np.float32
    edge = interpolate_missing(mesh, np.array([False, False, False, True, True]))
    assert np.allclose(edge[:3, 5, 1], 30.0)  # held at the ends


def test_lms_files_are_readable_the_way_ernerf_reads_them(subject: SubjectLayout) -> None:
    lms = np.loadtxt(str(subject.lms(0)), dtype=np.float32)
    assert lms.shape == (68, 2) and (lms > 0).all() and (lms < 512).all()




def test_parallel_workers_give_the_serial_result(prepare_subject) -> None:
    layout = SubjectLayout(prepare_subject("train/trump_10s.mp4", upto="landmarks"))
    frames = [layout.ori_img(i) for i in range(90)]  # three batches, shared by two processes
    serial = mesh_frames(frames, workers=1)
    parallel = mesh_frames(frames, workers=2, min_parallel=0)
    assert np.array_equal(serial[1], parallel[1]) and np.allclose(serial[0], parallel[0], atol=1e-3)
    assert np.allclose(serial[0], np.load(layout.mesh)[:90], atol=1e-3)


def test_blacked_out_frames_are_flagged_and_bridged(tmp_path) -> None:
    clip = tmp_path / "gap.mp4"  # frames 50-59 (2.0-2.4 s) painted black: no face there
    run_ffmpeg(["-i", str(shared_clip("train/trump_10s.mp4")), "-t", "4", "-vf",
                "drawbox=x=0:y=0:w=iw:h=ih:color=black:t=fill:enable='between(n,50,59)'",
                "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "copy", str(clip)], "blacking")
    ctx = StepContext(layout=SubjectLayout(tmp_path / "s"), video=clip)
    for step in (IngestStep(), HeadboxStep(), LandmarksStep(workers=1)):
        step.run(ctx)
    valid, mesh = np.load(ctx.layout.mesh_valid), np.load(ctx.layout.mesh)
    assert not valid[50:60].any() and valid[:48].all() and valid[62:].all()
    assert any("interpolated" in w for w in ctx.warnings)
    # bridged linearly between the last frame before and the first after the gap
    before, after = np.flatnonzero(valid[:50])[-1], 60 + np.flatnonzero(valid[60:])[0]
    w = (55 - before) / (after - before)
    assert np.allclose(mesh[55], (1 - w) * mesh[before] + w * mesh[after], atol=1e-3)
    assert np.allclose(np.loadtxt(ctx.layout.lms(55)), mesh_to_ibug68(mesh[55]), atol=1e-3)
