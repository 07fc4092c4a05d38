"""Ingest: 25 fps CFR H.264 at the original size, 16 kHz mono audio aligned with the frames."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from ernerf.errors import ErnerfError
from ernerf.io.audio import load_audio, write_wav
from ernerf.io.layout import SubjectLayout
from ernerf.io.video import VideoWriter, iter_frames, probe
from ernerf.preprocess.base import StepContext
from ernerf.preprocess.ingest import IngestStep, check_same_source, file_identity
from tests.conftest import shared_clip

TRAIN_CLIPS = ["train/trump_10s.mp4", "train/hdtf_aoc_8s.mp4"]


def _ingest(tmp_path: Path, video: Path, audio: Path | None = None, **kwargs) -> StepContext:
    ctx = StepContext(layout=SubjectLayout(tmp_path / "subject"), video=video, audio=audio)
    IngestStep(**kwargs).run(ctx)
    return ctx


@pytest.mark.parametrize("clip", TRAIN_CLIPS)
def test_train_clip_is_normalised_to_cfr_h264_with_matching_audio(prepare_subject, clip: str) -> None:
    layout = SubjectLayout(prepare_subject(clip, upto="ingest"))
    meta = json.loads(layout.meta.read_text())
    with av.open(str(layout.video)) as c:
        vs = c.streams.video[0]
        assert vs.codec_context.name == "h264" and vs.codec_context.pix_fmt == "yuv420p"
        assert not c.streams.audio
        stamps = [f.time for f in c.decode(vs)]
        counted = vs.frames  # read while the file is open (PyAV 18.1.1 refuses it after)
    n = len(stamps)
    assert n == meta["num_frames"] == counted
    assert np.allclose(np.diff(stamps), 1 / 25, atol=1e-3)  # constant frame rate
    assert (meta["width"], meta["height"], meta["fps"]) == (512, 512, 25)
    source = probe(shared_clip(clip))
    assert abs(n - source.duration * 25) <= 1
    wav, sr = sf.read(layout.audio)
    assert sr == 16000 and wav.ndim == 1 and len(wav) == n * 16000 // 25
    assert -40 < meta["audio_db"] < -5  # real speech, not silence or clipping
    preview = np.asarray(iter_frames(layout.video, stop=1).__next__(), dtype=float)
    import cv2

    assert np.abs(cv2.imread(str(layout.preview))[..., ::-1] - preview).mean() < 1.0


def test_odd_frame_rate_keeps_audio_aligned(tmp_path: Path) -> None:
    ctx = _ingest(tmp_path, shared_clip("edge/odd_fps_22.mp4"))
    info, meta = probe(ctx.layout.video), ctx.meta()
    assert info.fps == 25 and not info.variable_frame_rate
    assert abs(meta["num_frames"] - probe(shared_clip("edge/odd_fps_22.mp4")).duration * 25) <= 1
    wav, sr = sf.read(ctx.layout.audio)
    assert abs(len(wav) / sr - meta["num_frames"] / 25) <= 1 / 25
    # the speech itself must line up: compare with the source's own track at the same times
    src = load_audio(shared_clip("edge/odd_fps_22.mp4"))[: len(wav)]
    assert np.corrcoef(src, wav[: len(src)])[0, 1] > 0.99


def test_flash_and_beep_stay_in_sync_through_frame_rate_change(tmp_path: Path) -> None:
    """A 22 fps clip with a white flash and a beep both at 1.5 s: after ingest they coincide within a frame."""
    fps, sr, t_event = 22, 16000, 1.5
    audio = np.zeros(int(4 * sr), dtype=np.float32)
    t = np.arange(int(0.2 * sr)) / sr
    audio[int(t_event * sr):int(t_event * sr) + len(t)] = 0.5 * np.sin(2 * np.pi * 440 * t)
    write_wav(tmp_path / "beep.wav", audio, sr)
    with VideoWriter(tmp_path / "flash.mp4", fps=fps, audio=tmp_path / "beep.wav") as w:
        for i in range(4 * fps):
            on = t_event <= i / fps < t_event + 0.2
            w.write(np.full((64, 96, 3), 255 if on else 0, dtype=np.uint8))
    ctx = _ingest(tmp_path, tmp_path / "flash.mp4")
    bright = [f.mean() > 128 for f in iter_frames(ctx.layout.video)]
    video_onset = bright.index(True) / 25
    wav, _ = sf.read(ctx.layout.audio)
    audio_onset = int(np.argmax(np.abs(wav) > 0.1)) / sr
    assert abs(video_onset - t_event) <= 1 / 25 + 1e-6
    assert abs(audio_onset - t_event) < 0.03  # the AAC round trip blurs the onset by a few ms
    assert abs(video_onset - audio_onset) <= 1 / 25 + 0.03


def test_silent_track_warns(tmp_path: Path) -> None:
    ctx = _ingest(tmp_path, shared_clip("edge/silent_audio_track.mp4"))
    assert any("silent" in w for w in ctx.warnings)
    assert (ctx.meta()["width"], ctx.meta()["height"]) == (480, 480)
    assert probe(ctx.layout.video).fps == 25


def test_replacement_audio_is_used_and_long_video_trimmed_to_it(tmp_path: Path) -> None:
    speech = shared_clip("audio/obama_5s.wav")
    ctx = _ingest(tmp_path, shared_clip("train/trump_10s.mp4"), audio=speech)
    n = ctx.num_frames
    assert abs(n - 125) <= 1 and any("shorter than the video" in w for w in ctx.warnings)
    wav, _ = sf.read(ctx.layout.audio)
    ref = load_audio(speech)[: len(wav)]
    assert np.corrcoef(ref, wav[: len(ref)])[0, 1] > 0.99


def test_max_duration_trims_with_warning(tmp_path: Path) -> None:
    ctx = _ingest(tmp_path, shared_clip("train/hdtf_aoc_8s.mp4"), max_duration=4.0)
    assert ctx.num_frames == 100 and probe(ctx.layout.video).num_frames == 100
    assert len(sf.read(ctx.layout.audio)[0]) == 4 * 16000
    assert any("first 4.0 s" in w for w in ctx.warnings)


def test_display_rotation_is_applied(tmp_path: Path) -> None:
    from ernerf.io.video import run_ffmpeg

    rotated = tmp_path / "rotated.mp4"  # a phone clip: pixels stored sideways plus a 90 degree display matrix
    run_ffmpeg(["-display_rotation", "90", "-i", str(shared_clip("edge/tiny_face_full_body.mp4")), "-t", "3.5",
                "-c", "copy", str(rotated)], "tagging a rotation")
    assert probe(rotated).rotation == 90
    ctx = _ingest(tmp_path, rotated)
    assert (ctx.meta()["width"], ctx.meta()["height"]) == (1080, 720)
    stored = next(iter_frames(shared_clip("edge/tiny_face_full_body.mp4"), stop=1)).astype(float)  # [1080, 720]
    shown = next(iter_frames(ctx.layout.video, stop=1)).astype(float)  # [720, 1080]
    err = {k: np.abs(np.rot90(stored, k) - shown).mean() for k in (1, 3)}
    assert err[1] < 4 < err[3]  # rotated counter-clockwise, as players show it


def test_conforming_h264_is_copied_losslessly(prepare_subject) -> None:
    """trump_10s is already H.264 yuv420p at 25 fps CFR: ingest remuxes it, so the pixels are untouched."""
    layout = SubjectLayout(prepare_subject("train/trump_10s.mp4", upto="ingest"))
    for ours, theirs in zip(iter_frames(layout.video, stop=3), iter_frames(shared_clip("train/trump_10s.mp4"), stop=3)):
        assert np.array_equal(ours, theirs)


def test_the_source_identity_survives_a_move_and_tells_files_apart(tmp_path: Path, prepare_subject) -> None:
    clip = shared_clip(TRAIN_CLIPS[0])
    moved = tmp_path / "renamed.mp4"
    shutil.copyfile(clip, moved)
    assert file_identity(moved) == file_identity(clip)
    data = bytearray(clip.read_bytes())
    data[-10] ^= 0xFF  # same size, one byte changed near the end
    edited = tmp_path / "edited.mp4"
    edited.write_bytes(bytes(data))
    assert file_identity(edited) != file_identity(clip)
    meta = json.loads(SubjectLayout(prepare_subject(TRAIN_CLIPS[0], upto="ingest")).meta.read_text())
    assert meta["source_id"] == meta["audio_source_id"] == file_identity(clip)


def _made_from(tmp_path: Path, **meta: object) -> SubjectLayout:
    layout = SubjectLayout(tmp_path / "data" / "s")
    layout.root.mkdir(parents=True)
    layout.meta.write_text(json.dumps(meta))
    return layout


def test_another_video_is_refused_naming_both_and_the_fixes(tmp_path: Path) -> None:
    trump, aoc = (shared_clip(c) for c in TRAIN_CLIPS)
    layout = _made_from(tmp_path, source="/old/place/trump.mp4", source_id=file_identity(trump))
    check_same_source(layout, trump)  # the same file, wherever it lives now
    with pytest.raises(ErnerfError) as info:
        check_same_source(layout, aoc)
    message = str(info.value)
    assert "/old/place/trump.mp4" in message and f"video={aoc}" in message and "subject=<name>" in message
    assert f"python preprocess.py video={aoc} subject=s paths.data_root={layout.root.parent} " \
           "preprocess.force=[ingest]" in message
    with pytest.raises(ErnerfError, match="does not exist"):
        check_same_source(layout, tmp_path / "typo.mp4")


def test_another_audio_track_is_refused(tmp_path: Path) -> None:
    trump = shared_clip(TRAIN_CLIPS[0])
    wav = shared_clip("audio/obama_5s.wav")
    layout = _made_from(tmp_path, source=str(trump), source_id=file_identity(trump),
                        audio_source=str(trump), audio_source_id=file_identity(trump))
    check_same_source(layout, trump, None)
    with pytest.raises(ErnerfError, match=f"made with audio {trump}, not audio={wav}"):
        check_same_source(layout, trump, wav)


def test_datasets_without_identities_compare_what_they_recorded(tmp_path: Path) -> None:
    trump, aoc = (shared_clip(c) for c in TRAIN_CLIPS)
    old = _made_from(tmp_path / "a", source=str(trump))  # the recorded file is still there: compare the files
    check_same_source(old, trump)
    with pytest.raises(ErnerfError, match="not video="):
        check_same_source(old, aoc)
    gone = _made_from(tmp_path / "b", source="/gone/trump.mp4", source_fps=25.0, width=512, height=512, duration=10.0)
    check_same_source(gone, trump)  # the file is gone: its frame rate, size and length must fit
    with pytest.raises(ErnerfError, match="not video="):
        check_same_source(gone, aoc)  # 8 s: shorter than the 10 s the dataset holds
    with pytest.raises(ErnerfError, match="not video="):
        check_same_source(gone, shared_clip("edge/tiny_face_full_body.mp4"))  # 720x1080
