"""Report: model_data.json lists what exists; the contact sheet shows landmarks, parsing and pose axes."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from ernerf.io.layout import SubjectLayout
from ernerf.preprocess.base import StepContext
from ernerf.preprocess.report import AXIS_BGR, frame_tile, load_track, overlay_parsing


@pytest.fixture(scope="module")
def reported(prepare_subject) -> SubjectLayout:
    """trump_10s through the whole real pipeline, the report last (shared by the test run, read only)."""
    return SubjectLayout(prepare_subject("train/trump_10s.mp4"))


def test_model_data_lists_existing_files_and_facts(reported: SubjectLayout) -> None:
    data = json.loads(reported.model_data.read_text())
    assert data["meta"]["num_frames"] == StepContext(layout=reported).num_frames
    for key in ("mesh", "ori_imgs", "parsing", "au", "track_params", "transforms_train", "contact_sheet"):
        assert (reported.root / data["files"][key]).exists(), key
    # only what exists is listed (the session-shared subject folder may or may not hold later steps' outputs)
    assert all((reported.root / rel).exists() for rel in data["files"].values())
    assert ("gt_imgs" in data["files"]) == reported.gt_dir.exists()
    assert not any("aud_hu" in str(rel) for rel in data["files"].values())  # HuBERT features were never made
    assert data["steps"]["tracking"]["facts"]["reproj_err_px"] == pytest.approx(data["camera"]["reproj_err_px"], 1e-3)


def test_contact_sheet_is_a_grid_of_annotated_frames(reported: SubjectLayout) -> None:
    sheet = cv2.imread(str(reported.contact_sheet))
    assert sheet.shape == (2 * 320, 3 * 320, 3)
    tile = frame_tile(reported, 0, load_track(reported))
    raw = cv2.imread(str(reported.ori_img(0)))
    # landmarks: yellow dots on every 68 point
    lms = np.loadtxt(reported.lms(0)).round().astype(int)
    on_dots = tile[lms[:, 1], lms[:, 0]]
    assert np.all((on_dots[:, 1] > 200) & (on_dots[:, 2] > 200) & (on_dots[:, 0] < 80))
    # pose axes: pure red (x) and green (y) strokes appear that the raw frame does not have
    for colour in AXIS_BGR[:2]:
        near = [np.all(np.abs(img.astype(int) - colour) < 30, axis=-1) for img in (tile, raw)]
        drawn = near[0] & ~near[1]
        assert drawn.sum() > 100
    # parsing overlay: head pixels are tinted towards blue (BGR [255, 0, 0] as cv2 reads the parsing)
    head = np.all(cv2.imread(str(reported.parsing(0))) == (255, 0, 0), axis=-1)
    assert head.mean() > 0.05
    shift = tile[head].astype(float).mean(0) - raw[head].astype(float).mean(0)
    assert shift[0] > 20 and shift[2] < -20


def test_parsing_overlay_tints_only_labelled_pixels() -> None:
    img = np.full((4, 4, 3), 100, np.uint8)
    parsing = np.full((4, 4, 3), 255, np.uint8)
    parsing[:2] = (255, 0, 0)  # head, as cv2 reads it (BGR)
    out = overlay_parsing(img, parsing)
    assert np.array_equal(out[2:], img[2:])
    assert out[0, 0, 0] > 100 and out[0, 0, 1] < 100
