"""Encoding: result.mp4 has H.264 video and AAC audio of the same length; RGBA and depth extras."""

from __future__ import annotations

import subprocess
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from ernerf.errors import ErnerfError
from ernerf.io.audio import load_audio
from ernerf.io.video import ffmpeg_exe, iter_frames, probe, run_ffmpeg
from ernerf.postprocess.depth import colorize_depth, depth_range
from ernerf.postprocess.mux import ResultWriter, even_size
from tests.conftest import shared_clip


def streams(path: Path) -> dict[str, tuple[str, float]]:
    """codec name and duration (s) of each stream kind."""
    with av.open(str(path)) as c:
        return {s.type: (s.codec_context.name, float(s.duration * s.time_base)) for s in c.streams}


def first_rgba_frame(path: Path, w: int, h: int) -> np.ndarray:
    """Decode with libvpx (ffmpeg's native VP9 decoder drops the alpha plane)."""
    cmd = [ffmpeg_exe(), "-loglevel", "error", "-c:v", "libvpx-vp9", "-i", str(path), "-frames:v", "1",
           "-pix_fmt", "rgba", "-f", "rawvideo", "-"]
    return np.frombuffer(subprocess.run(cmd, capture_output=True, check=True).stdout, np.uint8).reshape(h, w, 4)


@pytest.fixture(scope="module")
def mp3_stereo(tmp_path_factory) -> Path:
    """obama_5s.wav as a 44.1 kHz stereo mp3 (what users bring)."""
    out = tmp_path_factory.mktemp("audio") / "speech.mp3"
    run_ffmpeg(["-i", str(shared_clip("audio/obama_5s.wav")), "-ac", "2", "-ar", "44100", "-t", "2.3",
                "-c:a", "libmp3lame", str(out)], "making a test mp3")
    return out


@pytest.mark.parametrize("num_frames", [40, 75])  # audio 2.3 s: video shorter (trim) and longer (pad)
def test_result_has_audio_of_video_length(tmp_path, mini_subject, mp3_stereo, num_frames):
    frames = list(iter_frames(mini_subject.video))
    writer = ResultWriter(tmp_path, mp3_stereo, num_frames)
    for t in range(num_frames):
        writer.write(frames[t % len(frames)])
    outputs = writer.close()
    info = probe(outputs["video"])
    assert info.has_audio and info.fps == 25 and info.num_frames == num_frames
    kinds = streams(outputs["video"])
    assert kinds["video"][0] == "h264" and kinds["audio"][0] == "aac"
    assert abs(kinds["audio"][1] - num_frames / 25) < 0.05  # within ~one frame (AAC block)
    assert abs(kinds["video"][1] - num_frames / 25) < 0.05
    assert not list(tmp_path.glob(".tmp.*"))  # temporary audio track cleaned up


def test_muxed_audio_is_the_input_speech(tmp_path, mini_subject, mp3_stereo):
    frame = next(iter_frames(mini_subject.video))
    writer = ResultWriter(tmp_path, mp3_stereo, 50)
    for _ in range(50):
        writer.write(frame)
    out = writer.close()["video"]
    src, got = load_audio(mp3_stereo, 16000)[:32000], load_audio(out, 16000)[:32000]
    lag = int(np.argmax(np.correlate(got[4000:12000], src[4000:12000], "full"))) - 7999
    assert abs(lag) < 160  # same speech, aligned within 10 ms
    assert np.corrcoef(src[8000:30000], got[8000 + lag:30000 + lag])[0, 1] > 0.9


@pytest.mark.parametrize("alpha", ["webm", "png"])
def test_alpha_and_depth_outputs(tmp_path, mini_subject, mp3_stereo, alpha):
    frames = list(iter_frames(mini_subject.video))[:10]
    head = np.zeros((64, 64, 4), np.uint8)
    head[16:48, 16:48] = (200, 100, 50, 255)
    depth = np.zeros(frames[0].shape[:2], np.float32)
    depth[100:300, 100:300] = np.linspace(1.0, 2.0, 200)[None, :]
    writer = ResultWriter(tmp_path, mp3_stereo, 10, alpha=alpha, depth=True)
    for frame in frames:
        writer.write(frame, head, colorize_depth(depth, *depth_range(depth)))
    outputs = writer.close()
    side = probe(outputs["depth"])
    assert (side.width, side.height) == (2 * frames[0].shape[1], frames[0].shape[0]) and side.has_audio
    if alpha == "webm":
        frame = first_rgba_frame(outputs["alpha"], 64, 64)
        assert frame[32, 32, 3] > 240 and frame[2, 2, 3] < 15  # alpha survives the encoding
    else:
        pngs = sorted(outputs["alpha"].glob("*.png"))
        assert len(pngs) == 10
        assert np.array_equal(cv2.cvtColor(cv2.imread(str(pngs[0]), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGRA2RGBA), head)


def test_depth_colours_and_even_size():
    depth = np.array([[0.0, 1.0, 2.0]], np.float32)
    rgb = colorize_depth(depth, 1.0, 2.0)
    assert rgb[0, 0].tolist() == [0, 0, 0] and rgb[0, 1].tolist() != rgb[0, 2].tolist()
    assert even_size(np.zeros((5, 7, 3), np.uint8)).shape == (6, 8, 3)


def test_depth_colours_are_black_exactly_where_depth_is_not_positive():
    depth = np.random.default_rng(0).uniform(-0.5, 2.0, (90, 121)).astype(np.float32)
    depth[:5], depth[5:8] = 0.0, 1e-30  # exactly 0: black; the smallest depths: coloured
    t = np.clip((depth - 0.3) / 1.4, 0.0, 1.0)
    rgb = cv2.applyColorMap((255 * (1.0 - t)).astype(np.uint8), cv2.COLORMAP_TURBO)
    expected = cv2.cvtColor(rgb, cv2.COLOR_BGR2RGB)
    expected[depth <= 0] = 0
    assert np.array_equal(colorize_depth(depth, 0.3, 1.7), expected)
    assert (expected[depth <= 0] == 0).all() and (expected[depth > 0].max(-1) > 0).mean() > 0.9


def test_mux_errors(tmp_path, mini_subject, mp3_stereo):
    with pytest.raises(ErnerfError, match="not found"):
        ResultWriter(tmp_path, tmp_path / "missing.wav", 10)
    with pytest.raises(ErnerfError, match="alpha"):
        ResultWriter(tmp_path, mp3_stereo, 10, alpha="gif")
    writer = ResultWriter(tmp_path, mp3_stereo, 10)
    writer.write(next(iter_frames(mini_subject.video)))
    with pytest.raises(ValueError, match="1 frames written"):
        writer.close()
    assert not (tmp_path / "result.mp4").exists()
