"""infer.py end to end with a fake renderer (real frames, real audio or synthesised text), and every user error it
reports."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ernerf.errors import ErnerfError
from ernerf.apps.inference import (FrameSource, audio_window, check_kind, infer_from_config, load_driving_audio,
                                  load_feature_file, load_subject)
from ernerf.io.audio import load_audio, write_wav
from ernerf.io.video import iter_frames, probe, run_ffmpeg
from tests.conftest import REPO, compose, shared_clip
from tests.postprocess.conftest import mini_subject  # noqa: F401 - session fixture
from tests.postprocess.mini_subject import FEATURE_DIM, CropRenderer
from tests.test_infer_minimal_deps import bare_env, saved_untrained_system  # noqa: F401 - bare_env is a fixture


@pytest.fixture(scope="module")
def m4a_speech(tmp_path_factory) -> Path:
    """2.3 s of radio31_8s.wav as 44.1 kHz stereo AAC in .m4a."""
    out = tmp_path_factory.mktemp("audio") / "speech.m4a"
    run_ffmpeg(["-i", str(shared_clip("audio/radio31_8s.wav")), "-ac", "2", "-ar", "44100", "-t", "2.3",
                "-c:a", "aac", str(out)], "making a test m4a")
    return out


def frames_for(audio: Path) -> int:
    """Output frames for an audio file: one per 40 ms of what ffmpeg decodes (ffmpeg < 7.1 keeps AAC's end padding)."""
    from ernerf.io.audio import load_audio

    return round(len(load_audio(audio)) / 16000 * 25)


def touch_checkpoint(runs: Path, subject: str, stage: str) -> Path:
    path = runs / subject / stage / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return 10 * np.log10(255.0**2 / max(np.mean((a.astype(float) - b.astype(float)) ** 2), 1e-12))




def test_audio_errors_and_silence_warning(tmp_path, m4a_speech):
    with pytest.raises(ErnerfError, match="not found"):
        load_driving_audio(tmp_path / "nope.wav")
    broken = tmp_path / "broken.mp3"
    broken.write_bytes(b"this is not audio" * 100)
    with pytest.raises(ErnerfError, match="re-export"):
        load_driving_audio(broken)
    short = write_wav(tmp_path / "short.wav", np.random.default_rng(0).normal(0, 0.1, 3200).astype(np.float32))
    with pytest.raises(ErnerfError, match=r"0\.20 s.*at least 0\.5 s"):
        load_driving_audio(short)
    silent = write_wav(tmp_path / "silent.wav", np.zeros(16000, np.float32))
    wav, warnings = load_driving_audio(silent)
    assert len(wav) == 16000 and "silent" in warnings[0] and "mouth" in warnings[0]
    wav, warnings = load_driving_audio(m4a_speech)  # 44.1 kHz stereo AAC -> 16 kHz mono
    assert abs(len(wav) - 2.3 * 16000) < 1600 and warnings == []


def test_feature_kind_mismatch(tmp_path):
    with pytest.raises(ErnerfError, match="trained on 'mel'"):
        check_kind("hu", "mel")
    check_kind(None, "mel")
    np.save(tmp_path / "aud_hu.npy", np.zeros((10, 16, 1024), np.float32))
    with pytest.raises(ErnerfError, match="'mel' features of width 80"):
        load_feature_file(tmp_path / "aud_hu.npy", "mel", 80)
    np.save(tmp_path / "flat.npy", np.zeros((10, 80), np.float32))
    with pytest.raises(ErnerfError, match=r"\[frames, 16, C\]"):
        load_feature_file(tmp_path / "flat.npy", "mel", 80)


def test_audio_window_repeats_the_edge_windows_past_the_ends():
    feats = np.arange(5, dtype=np.float32)[:, None, None] * np.ones((5, 16, 2), np.float32) + 1
    win = audio_window(feats, 0)
    assert win.shape == (8, 16, 2)
    assert win[:, 0, 0].tolist() == [1, 1, 1, 1, 1, 2, 3, 4]  # frames -4..-1 see frame 0's window, not zero rows
    assert audio_window(feats, 4)[:, 0, 0].tolist() == [1, 2, 3, 4, 5, 5, 5, 5]
    assert audio_window(feats, 2)[:, 0, 0].tolist() == [1, 1, 1, 2, 3, 4, 5, 5]


def test_frame_source_random_access_matches_sequential(mini_subject):
    seq = list(iter_frames(mini_subject.video))
    src = FrameSource(mini_subject.video, block=4, keep=2)
    for i in [0, 1, 5, 11, 10, 3, 2, 7]:  # backwards and jumping across blocks
        assert np.array_equal(src.get(i), seq[i])
    src.close()


class CountingCapture:
    """A cv2.VideoCapture that counts its seeks."""

    def __init__(self, cap) -> None:
        self.cap, self.seeks = cap, 0

    def set(self, prop, value):
        self.seeks += 1
        return self.cap.set(prop, value)

    def __getattr__(self, name):
        return getattr(self.cap, name)


def test_frame_source_walking_back_seeks_once_per_cached_run_of_blocks(mini_subject):
    seq = list(iter_frames(mini_subject.video))
    src = FrameSource(mini_subject.video, block=2, keep=3)
    src._cap = CountingCapture(src._cap)
    assert all(np.array_equal(src.get(i), seq[i]) for i in range(12))
    assert src._cap.seeks == 0
    assert all(np.array_equal(src.get(i), seq[i]) for i in range(11, -1, -1))  # blocks 5..0, 3 kept: 4..3 cached
    assert src._cap.seeks == 1  # blocks 0, 1, 2 decoded after one seek, not one seek per block
    src.close()


def test_infer_end_to_end(tmp_path, mini_subject, m4a_speech):
    runs = tmp_path / "runs"
    touch_checkpoint(runs, "mini", "head")
    cfg = compose("infer", [f"paths.data_root={mini_subject.root.parent}", f"paths.runs_root={runs}",
                            "subject=mini", f"audio={m4a_speech}", f"output={tmp_path / 'out' / 'talk.mp4'}",
                            "postprocess.scheme=face_neck", "postprocess.depth=true", "progress=false"])
    view = load_subject(mini_subject.root, "aud_mel.npy")
    fake = CropRenderer(mini_subject, view.poses, view.img_ids)
    result = infer_from_config(cfg, system_loader=lambda path, device: fake)

    video = result.outputs["video"]
    assert video == tmp_path / "out" / "talk.mp4" and result.outputs["depth"].exists()
    info = probe(video)
    n = frames_for(m4a_speech)
    assert result.num_frames == n and info.num_frames == n and info.has_audio
    assert abs(info.duration - n / 25) < 0.05
    assert result.stage == "head" and result.render_fps > 0
    calls = np.array(fake.calls)
    assert calls[0] == 0 and np.abs(np.diff(calls)).max() == 1  # ping-pong through the poses, no jump
    originals = list(iter_frames(mini_subject.video))
    for t, out in enumerate(iter_frames(video)):
        assert psnr(out, originals[view.img_ids[calls[t]]]) > 33  # the right frame, pasted back in place


def test_infer_errors(tmp_path, mini_subject, m4a_speech):
    runs = tmp_path / "runs"
    base = [f"paths.data_root={mini_subject.root.parent}", f"paths.runs_root={runs}", "subject=mini",
            "progress=false"]
    fake = CropRenderer(mini_subject, np.zeros((1, 4, 4)), np.zeros(1, int))
    with pytest.raises(ErnerfError, match="audio file not found"):
        infer_from_config(compose("infer", base + [f"audio={tmp_path / 'x.wav'}"]), lambda p, d: fake)
    with pytest.raises(ErnerfError, match="python train.py stage=head subject=mini"):
        infer_from_config(compose("infer", base + [f"audio={m4a_speech}"]), lambda p, d: fake)
    touch_checkpoint(runs, "mini", "head")
    with pytest.raises(ErnerfError, match="trained on 'mel'"):
        infer_from_config(compose("infer", base + [f"audio={m4a_speech}", "audio_kind=hu"]), lambda p, d: fake)
    with pytest.raises(ErnerfError, match="scheme"):
        infer_from_config(compose("infer", base + [f"audio={m4a_speech}", "postprocess.scheme=hair"]),
                          lambda p, d: fake)
    assert FEATURE_DIM == fake.hparams["feature_dim"]


def test_output_paths_and_summary(tmp_path, capsys):
    from ernerf.apps.inference import InferenceResult, print_summary
    from ernerf.apps.preflight import output_paths

    assert output_paths(None, "anna", Path("a/hello.m4a"), "lips") == (Path("outputs/anna/hello_lips"), "result")
    assert output_paths(str(tmp_path / "x" / "talk.mp4"), "anna", Path("a.wav"), "head") == (tmp_path / "x", "talk")
    assert output_paths(str(tmp_path / "dir"), "anna", Path("a.wav"), "head") == (tmp_path / "dir", "result")
    with pytest.raises(ErnerfError, match="folder or an .mp4"):
        output_paths("talk.avi", "anna", Path("a.wav"), "head")
    result = InferenceResult({"video": tmp_path / "result.mp4", "alpha": tmp_path / "result_head.webm"}, 50,
                             seconds_total=4.0, seconds_render=2.0, warnings=["the audio is silent"], stage="head",
                             checkpoint=tmp_path / "last.ckpt")
    print_summary(result)
    out = capsys.readouterr().out
    assert "result_head.webm" in out and "silent" in out and "25.0 frames/s" in out and "2.00 s per output" in out


@pytest.mark.slow
def test_infer_with_the_real_system(tmp_path, mini_subject, m4a_speech):
    """A freshly initialised TalkingHeadSystem saved as last.ckpt goes through load_system and render_image."""
    import lightning as L
    import torch
    from hydra.utils import instantiate

    system = instantiate(compose("train", ["subject=mini", "debug=fast"]).model, num_frames=10)
    ckpt = touch_checkpoint(tmp_path / "runs", "mini", "lips")
    torch.save({"state_dict": system.state_dict(), "hyper_parameters": dict(system.hparams),
                "pytorch-lightning_version": L.__version__}, ckpt)
    out = tmp_path / "out"
    cfg = compose("infer", [f"paths.data_root={mini_subject.root.parent}", f"paths.runs_root={tmp_path / 'runs'}",
                            "subject=mini", f"audio={m4a_speech}", f"output={out}", "downscale=32",
                            "device=cpu", "progress=false", "postprocess.alpha=png"])
    result = infer_from_config(cfg)
    assert result.stage == "lips" and result.checkpoint == ckpt
    info = probe(result.outputs["video"])
    assert info.num_frames == result.num_frames == frames_for(m4a_speech) and info.has_audio
    assert (info.width, info.height) == (512, 512)  # pasted into the original frames, not the 16 px render
    heads = sorted(result.outputs["alpha"].glob("*.png"))
    assert len(heads) == result.num_frames


@pytest.mark.parametrize("script, args", [("infer.py", ["audio=y.wav"]), ("evaluate.py", [])])
def test_stage_is_a_plain_name_not_the_training_stage_group(script: str, args: list[str]) -> None:
    """`python infer.py stage=lips` reaches the config as the plain key stage_name: no training config comes along."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, str(REPO / script), "subject=x", *args, "stage=lips", "--cfg", "job"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "stage_name: lips" in done.stdout
    assert not any(line.startswith(("stage:", "loss:", "datamodule:", "model:")) for line in done.stdout.splitlines())
    assert compose(script.removesuffix(".py"), ["subject=x", *args]).stage_name is None


# ---------------------------------------------------------------- text= : the avatar speaks synthesised text


def wav_seconds(path: Path) -> float:
    import wave

    with wave.open(str(path)) as f:
        return f.getnframes() / f.getframerate()


def test_infer_speaks_text_written_beside_the_video(tmp_path, mini_subject):
    runs = tmp_path / "runs"
    touch_checkpoint(runs, "mini", "head")
    text = "Grüß dich, Zoë! Hier spricht der Avatar."
    cfg = compose("infer", [f"paths.data_root={mini_subject.root.parent}", f"paths.runs_root={runs}",
                            "subject=mini", f"text='{text}'", "voice=de", "speed=200",
                            f"output={tmp_path / 'out'}", "progress=false"])
    view = load_subject(mini_subject.root, "aud_mel.npy")
    result = infer_from_config(cfg, system_loader=lambda path, device: CropRenderer(mini_subject, view.poses,
                                                                                      view.img_ids))
    video, speech = result.outputs["video"], result.outputs["speech"]
    assert (video, speech) == (tmp_path / "out" / "result.mp4", tmp_path / "out" / "result.wav")
    info = probe(video)
    assert info.has_audio and info.num_frames == result.num_frames == round(wav_seconds(speech) * 25)
    assert abs(info.duration - wav_seconds(speech)) < 0.05
    assert 1.5 < wav_seconds(speech) < 6  # 7 words at 200 words per minute, with pauses


def test_text_from_a_file_names_the_outputs(tmp_path):
    from ernerf.apps.preflight import speech_text, text_stem

    script = tmp_path / "welcome.txt"
    script.write_text("Welcome, everyone.\nIt's a pleasure.", encoding="utf-8")
    assert speech_text(f"@{script}", None) == "Welcome, everyone.\nIt's a pleasure."
    assert text_stem("Welcome, everyone.", f"@{script}") == "welcome"
    stem = text_stem("Hello there. This is a test.", "Hello there. This is a test.")
    assert re.fullmatch(r"Hello_there_This_is_[0-9a-f]{6}", stem)
    assert text_stem("Hello there.  This is\na test.", "Hello there.  This is\na test.") == stem  # the same words
    assert text_stem("Hello there. This is another test.", "Hello there. This is another test.") != stem
    assert re.fullmatch(r"Zoë_spricht_[0-9a-f]{6}", text_stem("Zoë spricht.", "Zoë spricht."))
    assert re.fullmatch(r"speech_[0-9a-f]{6}", text_stem("?!", "?!"))
    assert speech_text(None, "a.wav") is None


@pytest.mark.parametrize("args, match", [
    (["audio=a.wav", "text=hello"], "both audio= and text= are given: give either audio=<"),
    ([], "no driving audio: give either audio=<a wav/mp3/m4a file> or text="),
    (["text=' ... '"], "text= is empty"),
    (["text=@/nonexistent/speech.txt"], r"cannot read the text file /nonexistent/speech\.txt"),
    (["text=hello", "voice=xx-nope"], "espeak-ng has no voice 'xx-nope': give voice= a language code"),
    (["text=hello", "speed=1000"], "speed=1000 is out of range"),
])
def test_text_errors_come_before_the_model_loads(tmp_path, mini_subject, args, match):
    runs = tmp_path / "runs"
    touch_checkpoint(runs, "mini", "head")
    cfg = compose("infer", [f"paths.data_root={mini_subject.root.parent}", f"paths.runs_root={runs}", "subject=mini",
                            f"output={tmp_path / 'out'}", *args])

    def no_loading(path, device):
        raise AssertionError("the model was loaded before the text was checked")

    with pytest.raises(ErnerfError, match=match):
        infer_from_config(cfg, system_loader=no_loading)
    assert not list((tmp_path / "out").glob("*.wav")) if (tmp_path / "out").exists() else True


def test_free_text_reaches_the_config_whole() -> None:
    from ernerf.cli import quote_free_text

    for text in ["Hello, it's me.", "a [b] {c} (d) = e", 'say "hi"', "costs $5 ${x}", "ends in \\", "x=y, z"]:
        arg = quote_free_text(f"text={text}", ("text",))
        assert compose("infer", ["subject=a", arg]).text == text
    assert quote_free_text("audio=a,b.wav", ("text",)) == "audio=a,b.wav"


def test_infer_py_text_end_to_end_without_librosa_or_soundfile(tmp_path, mini_subject, bare_env):
    """`python infer.py text=...` as a user types it (commas, an apostrophe, non-ASCII), on a saved system, in the
    GPU machine's environment: the video and the synthesised speech beside it, of the same length."""
    runs, out = tmp_path / "runs", tmp_path / "out" / "talk.mp4"
    saved_untrained_system(runs, "mini")
    cmd = [sys.executable, "infer.py", "subject=mini", "text=Hello, it's Zoë. This is a test.", f"output={out}",
           "device=cpu", f"paths.data_root={mini_subject.root.parent}", f"paths.runs_root={runs}", "downscale=32",
           "progress=false"]
    done = subprocess.run(cmd, cwd=REPO, env=bare_env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    speech = out.with_suffix(".wav")
    assert str(speech) in done.stdout
    seconds = wav_seconds(speech)
    assert 1.5 < seconds < 5  # 7 words at 150 words per minute
    info = probe(out)
    assert info.has_audio and info.num_frames == round(seconds * 25) and abs(info.duration - seconds) < 0.05
    muxed = load_audio(out)
    spoken = load_audio(speech)
    k = min(len(muxed), len(spoken))
    assert np.corrcoef(np.abs(muxed[:k]), np.abs(spoken[:k]))[0, 1] > 0.9  # the synthesised speech, in sync


def test_infer_py_with_both_or_neither_driving_input_is_a_one_line_error(tmp_path):
    from tests.reliability import assert_user_error, run_entry_point

    base = ["subject=mini", f"paths.runs_root={tmp_path / 'runs'}", f"paths.data_root={tmp_path / 'data'}"]
    done = run_entry_point(REPO, "infer.py", *base, "audio=a.wav", "text=Hello, world.", timeout=120)
    assert_user_error(done, "both audio= and text= are given", "text=")
