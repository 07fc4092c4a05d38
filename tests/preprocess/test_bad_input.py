"""Bad inputs fail early with an ErnerfError that names the problem and the fix; good outputs survive."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ernerf.errors import ErnerfError
from ernerf.io.layout import SubjectLayout
from ernerf.io.video import run_ffmpeg
from ernerf.preprocess.base import StepContext, run_steps
from ernerf.preprocess.headbox import HeadboxStep
from ernerf.preprocess.ingest import IngestStep
from tests.conftest import REPO, compose, shared_clip

TRUMP = "train/trump_10s.mp4"


def _ctx(tmp_path: Path, video: Path, audio: Path | None = None) -> StepContext:
    return StepContext(layout=SubjectLayout(tmp_path / "subject"), video=video, audio=audio)


def _cut(tmp_path: Path, seconds: float, name: str = "cut.mp4", faststart: bool = False) -> Path:
    out = tmp_path / name
    extra = ["-movflags", "+faststart"] if faststart else []
    run_ffmpeg(["-i", str(shared_clip(TRUMP)), "-t", str(seconds), "-c", "copy", *extra, str(out)], "cutting")
    return out


def _ingest_error(tmp_path: Path, video: Path, audio: Path | None = None) -> str:
    with pytest.raises(ErnerfError) as info:
        IngestStep().run(_ctx(tmp_path, video, audio))
    return str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    assert "video not found" in _ingest_error(tmp_path, tmp_path / "nope.mp4")


def test_not_a_video(tmp_path: Path) -> None:
    text = tmp_path / "notes.mp4"
    text.write_text("these are meeting notes, not a video\n" * 50)
    msg = _ingest_error(tmp_path, text)
    assert "not a video" in msg and "notes.mp4" in msg
    assert "no video stream" in _ingest_error(tmp_path, shared_clip("audio/obama_5s.wav"))


def test_still_image(tmp_path: Path, prepare_subject) -> None:
    photo = SubjectLayout(prepare_subject(TRUMP, upto="ingest")).preview
    assert "still image" in _ingest_error(tmp_path, photo, audio=shared_clip("audio/obama_5s.wav"))


def test_corrupt_header(tmp_path: Path) -> None:
    data = bytearray(shared_clip(TRUMP).read_bytes())
    data[:4096] = bytes(4096)  # the container header is gone
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(bytes(data))
    assert "corrupt" in _ingest_error(tmp_path, bad)


def test_truncated_download_gives_no_half_dataset(tmp_path: Path) -> None:
    whole = _cut(tmp_path, 10, "whole.mp4", faststart=True)  # index first, so the cut file still opens
    bad = tmp_path / "truncated.mp4"
    bad.write_bytes(whole.read_bytes()[: whole.stat().st_size * 2 // 5])
    msg = _ingest_error(tmp_path, bad)
    assert "truncated" in msg and "Re-download" in msg
    assert not (tmp_path / "subject" / "input_temp.mp4").exists()
    assert not list((tmp_path / "subject").glob(".tmp.*"))


def test_too_short(tmp_path: Path) -> None:
    msg = _ingest_error(tmp_path, _cut(tmp_path, 2))
    assert "at least 3.0 s" in msg and "longer clip" in msg


def test_no_audio_track_asks_for_audio_file(tmp_path: Path) -> None:
    msg = _ingest_error(tmp_path, shared_clip("edge/no_audio_track_portrait.mp4"))
    assert "has no audio track: give one with audio=<file>" in msg


def test_no_face(tmp_path: Path) -> None:
    clip = tmp_path / "pattern.mp4"
    run_ffmpeg(["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25", "-f", "lavfi", "-i", "sine=frequency=300",
                "-t", "4", "-pix_fmt", "yuv420p", "-c:a", "aac", str(clip)], "making a clip without a face")
    ctx = _ctx(tmp_path, clip)
    IngestStep().run(ctx)
    with pytest.raises(ErnerfError, match="no face was found"):
        HeadboxStep().run(ctx)


def test_face_missing_in_most_frames(tmp_path: Path) -> None:
    clip = tmp_path / "mostly_pattern.mp4"  # 1.5 s of Trump, then 3 s of a test pattern
    run_ffmpeg(["-t", "1.5", "-i", str(shared_clip(TRUMP)), "-f", "lavfi", "-t", "3", "-i",
                "testsrc2=size=512x512:rate=25", "-f", "lavfi", "-t", "4.5", "-i", "sine=frequency=300",
                "-filter_complex", "[0:v]setsar=1[a];[1:v]setsar=1,format=yuv420p[b];[a][b]concat=n=2:v=1:a=0[v]",
                "-map", "[v]", "-map", "2:a", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
                str(clip)], "making a clip that mostly lacks a face")
    ctx = _ctx(tmp_path, clip)
    IngestStep().run(ctx)
    with pytest.raises(ErnerfError, match=r"found in only 3\d% of the frames.*min_face_ratio"):
        HeadboxStep(min_face_ratio=0.5).run(ctx)
    assert HeadboxStep(min_face_ratio=0.25).run(ctx)["face_ratio"] < 0.4  # the ratio is the user's call


def test_tiny_face_reports_size_and_fix(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, shared_clip("edge/tiny_face_full_body.mp4"))
    IngestStep().run(ctx)
    with pytest.raises(ErnerfError) as info:
        HeadboxStep(min_box_size=256).run(ctx)
    msg = str(info.value)
    assert "too small" in msg and "at least 256 px" in msg and "Film closer" in msg
    measured = int(msg.split("head box measures ")[1].split(" px")[0])
    assert 100 < measured < 256
    assert not ctx.layout.ori_imgs.exists() and not ctx.layout.face_video.exists()


def test_two_faces_keeps_the_larger_and_warns(tmp_path: Path) -> None:
    clip = tmp_path / "two.mp4"
    # AOC's face is larger than Trump's in these clips: she must be kept, whichever side she is on
    run_ffmpeg(["-i", str(shared_clip(TRUMP)), "-i", str(shared_clip("train/hdtf_aoc_8s.mp4")), "-filter_complex",
                "[0:v][1:v]hstack=inputs=2[v]", "-map", "[v]", "-map", "0:a", "-t", "4", "-c:v", "libx264",
                "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(clip)], "making a two-person clip")
    ctx = _ctx(tmp_path, clip)
    IngestStep().run(ctx)
    HeadboxStep().run(ctx)
    box = json.loads(ctx.layout.head_bbox.read_text())
    assert (box["x1"] + box["x2"]) / 2 > 512 + 100  # centred on the right half (AOC)
    assert any("more than one face" in w for w in ctx.warnings)


def test_failing_rerun_keeps_earlier_outputs(tmp_path: Path) -> None:
    layout = SubjectLayout(tmp_path / "subject")
    run_steps([IngestStep()], StepContext(layout=layout, video=_cut(tmp_path, 4)))
    before = {p.name: p.read_bytes() for p in IngestStep().outputs(layout)}
    with pytest.raises(ErnerfError):
        run_steps([IngestStep()], StepContext(layout=layout, video=_cut(tmp_path, 2, "short.mp4")), force=["ingest"])
    assert {p.name: p.read_bytes() for p in IngestStep().outputs(layout)} == before


def test_cli_prints_the_error_and_exits_2(tmp_path: Path) -> None:
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    names = list(compose("preprocess", ["subject=bad"]).preprocess.steps)
    later = [f"~preprocess.steps.{s}" for s in names[names.index("landmarks") + 1:]]  # about ingest only
    proc = subprocess.run([sys.executable, str(REPO / "preprocess.py"), f"video={text}", "subject=bad",
                           f"paths.data_root={tmp_path}", *later], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert "error:" in proc.stderr and "not a video" in proc.stderr and "Traceback" not in proc.stderr


def test_failing_headbox_rerun_keeps_the_earlier_crops(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, _cut(tmp_path, 4))
    IngestStep().run(ctx)
    HeadboxStep().run(ctx)
    layout = ctx.layout
    crops = sorted(p.name for p in layout.ori_imgs.iterdir())
    video, bbox = layout.face_video.read_bytes(), layout.head_bbox.read_text()
    meta = json.loads(layout.meta.read_text())
    layout.meta.write_text(json.dumps({**meta, "num_frames": meta["num_frames"] + 50}))  # stale ingest facts
    redo = r"the ingest step writes it: run `python preprocess.py video=.* preprocess.force=\[ingest\]`"
    with pytest.raises(ErnerfError, match=redo):
        HeadboxStep().run(ctx)
    assert sorted(p.name for p in layout.ori_imgs.iterdir()) == crops
    assert layout.face_video.read_bytes() == video and layout.head_bbox.read_text() == bbox
    assert not list(layout.root.glob(".tmp.*"))
