"""The embedded talking sample: format, audio-driven mouth, and what mediapipe sees in its frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ernerf.apps.sample import SamplePaths, frame_loudness, main, make_sample, speech_track
from ernerf.constants import FPS
from ernerf.errors import ErnerfError

# Mediapipe face-mesh indices: inner-lip pairs down the middle of the mouth, outer eye corners, eyelids.
_LIP_PAIRS = ((13, 14), (82, 87), (312, 317))
_EYE_CORNERS = (33, 263)
_LID_PAIRS = ((159, 145), (386, 374))


@pytest.fixture(scope="module")
def sample(embedded_sample: SamplePaths) -> SamplePaths:
    return embedded_sample


@pytest.fixture(scope="module")
def mesh_tracks(sample: SamplePaths) -> dict[str, np.ndarray]:
    """Run mediapipe face detection and face mesh on every decoded frame."""
    import mediapipe as mp

    from ernerf.io.video import iter_frames

    boxes, points = [], []
    with mp.solutions.face_detection.FaceDetection(model_selection=1) as det, \
            mp.solutions.face_mesh.FaceMesh(max_num_faces=1, refine_landmarks=True) as mesh:
        for frame in iter_frames(sample.video):
            h, w = frame.shape[:2]
            found = det.process(frame).detections
            boxes.append(found[0].location_data.relative_bounding_box.width * w if found else 0.0)
            faces = mesh.process(frame).multi_face_landmarks
            points.append([[p.x * w, p.y * h] for p in faces[0].landmark] if faces else np.full((478, 2), np.nan))
    return {"box": np.array(boxes), "points": np.array(points)}


def _normalised_gap(points: np.ndarray, pairs: tuple[tuple[int, int], ...]) -> np.ndarray:
    gap = np.mean([np.linalg.norm(points[:, a] - points[:, b], axis=-1) for a, b in pairs], axis=0)
    return gap / np.linalg.norm(points[:, _EYE_CORNERS[0]] - points[:, _EYE_CORNERS[1]], axis=-1)


def _decoded_audio(path: Path) -> tuple[np.ndarray, int]:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        chunks = [f.to_ndarray().mean(axis=0) for f in container.decode(stream)]
        return np.concatenate(chunks).astype(np.float32), stream.codec_context.sample_rate


def test_video_is_h264_aac_25fps_with_streams_of_equal_length(sample: SamplePaths) -> None:
    import av

    mouth = np.load(sample.mouth)
    with av.open(str(sample.video)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        assert (v.codec_context.name, a.codec_context.name) == ("h264", "aac")
        assert float(v.average_rate) == FPS and min(v.codec_context.width, v.codec_context.height) >= 512
        v_len, a_len = float(v.duration * v.time_base), float(a.duration * a.time_base)
        frames = sum(1 for _ in c.decode(v))
    assert frames == len(mouth) == len(np.load(sample.blink))
    assert abs(v_len - frames / FPS) < 1e-3 and abs(a_len - v_len) < 1.5 / FPS


def test_mouth_opening_follows_the_loudness_of_the_muxed_audio(sample: SamplePaths) -> None:
    mouth = np.load(sample.mouth)
    wav, sr = _decoded_audio(sample.video)
    loud = frame_loudness(wav, sr)[: len(mouth)]
    assert np.corrcoef(loud, mouth)[0, 1] > 0.8
    assert mouth.min() == 0.0 and mouth.max() > 0.8  # closed in the pauses, wide open on loud vowels
    assert mouth[:8].max() == 0.0  # 0.4 s of silence before the speech starts


def test_mediapipe_finds_a_large_face_in_every_frame(mesh_tracks: dict[str, np.ndarray]) -> None:
    assert mesh_tracks["box"].min() > 200  # the head box (larger than the face box) must reach 256 px
    assert not np.isnan(mesh_tracks["points"]).any()


def test_face_mesh_sees_the_animated_mouth_and_blinks(sample: SamplePaths, mesh_tracks: dict) -> None:
    points = mesh_tracks["points"]
    measured = _normalised_gap(points, _LIP_PAIRS)
    assert np.corrcoef(measured, np.load(sample.mouth))[0, 1] > 0.9
    lids = _normalised_gap(points, _LID_PAIRS)
    blink = np.load(sample.blink)
    assert (blink > 0.9).sum() >= 2
    assert lids[blink > 0.9].max() < 0.75 * np.median(lids[blink == 0])


def test_head_moves_a_little_and_smoothly(mesh_tracks: dict) -> None:
    centre = mesh_tracks["points"].mean(axis=1)  # [N, 2]
    spread = centre.max(axis=0) - centre.min(axis=0)
    assert (spread > 3).all() and (spread < 40).all()  # pixels in a 640 frame
    assert np.abs(np.diff(centre, axis=0)).max() < 3


def test_bad_arguments_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(ErnerfError, match="seconds"):
        speech_track("This sentence certainly takes longer than one second to say.", seconds=1.0)
    with pytest.raises(ErnerfError, match="even frame size"):
        make_sample(tmp_path, size=301)


def test_cli_writes_sample_and_new_sentence(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import soundfile as sf

    from ernerf.io.video import probe

    assert main([f"out={tmp_path}", "text=Hi there.", "seconds=2", "size=512"]) == 0
    info = probe(tmp_path / "sample.mp4")
    assert (info.width, info.num_frames, info.has_audio) == (512, 50, True)
    speech, rate = sf.read(tmp_path / "new_sentence.wav")
    assert rate == 16000 and len(speech) / rate > 2.0
    assert "new_sentence.wav" in capsys.readouterr().out
    assert main(["dir=x"]) == 2 and "out=" in capsys.readouterr().err


def test_the_sample_without_its_extra_says_which_install_gives_it() -> None:
    """scikit-image is the `demo` extra: without it the sample is one line naming the install, not a traceback."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO
    from tests.reliability import assert_user_error

    env = {**os.environ, "ERNERF_HIDE_PACKAGES": "skimage",
           "PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "hidden_packages"), str(REPO)])}
    code = "from ernerf.cli import exit_on_user_error; from ernerf.apps.sample import _prepare_face; " \
           "exit_on_user_error(_prepare_face)(64)"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert_user_error(done, "scikit-image", "pip install -e .[demo]")
