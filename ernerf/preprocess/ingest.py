"""Step 1: validate the raw video and normalise it to 25 fps CFR H.264 plus a 16 kHz mono wav."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import numpy as np

from ernerf.errors import ErnerfError
from ernerf.io.atomic import atomic_path, write_text
from ernerf.io.audio import fit_length, load_audio, loudness_db, write_wav
from ernerf.io.layout import SubjectLayout
from ernerf.io.video import VideoInfo, iter_frames, probe, run_ffmpeg
from ernerf.preprocess.base import PreprocessStep, StepContext
from ernerf.preprocess.check import preprocess_command

SILENCE_DB = -60.0  # speech sits around -30..-15 dBFS; a track below -60 carries no usable speech
TRUNCATION_TOLERANCE = 0.05  # fraction of the expected frames that may be missing before we call it truncated
IDENTITY_BYTES = 1 << 20  # hashed at each end of an input file: tells videos apart without reading hours of them


class IngestStep(PreprocessStep):
    """Normalise the user's video: constant 25 fps, even size, rotation applied, aligned 16 kHz audio."""

    name = "ingest"
    requires = ()

    def __init__(self, fps: int = 25, sample_rate: int = 16000, max_duration: float | None = None,
                 min_duration: float = 3.0, crf: int = 18, preset: str = "veryfast") -> None:
        self.fps = fps
        self.sample_rate = sample_rate
        self.max_duration = max_duration
        self.min_duration = min_duration
        self.crf = crf
        self.preset = preset  # x264 speed/size trade-off of the re-encode (ultrafast: faster, larger files)

    def outputs(self, layout: SubjectLayout) -> list[Path]:
        return [layout.video, layout.audio, layout.preview, layout.meta]

    def run(self, ctx: StepContext) -> dict[str, Any]:
        if ctx.video is None:
            raise ErnerfError("no input video: run `python preprocess.py video=<path/to/video.mp4> subject=<name>`.")
        info = probe(ctx.video)
        _reject_still_image(info)
        wav, audio_source = self._source_audio(ctx, info)
        duration = self._target_duration(ctx, info, wav)
        with ctx.bar(math.ceil(duration * self.fps - 1e-6)) as bar:  # the fps filter keeps a last part-frame
            num_frames = self._normalise_video(info, ctx.layout.video, duration,
                                               lambda n: bar.update(min(n, bar.total) - bar.n))
        wav = fit_length(wav, int(round(num_frames * self.sample_rate / self.fps)))
        level = loudness_db(wav)
        if level < SILENCE_DB:
            ctx.warn(f"the audio of {audio_source} is silent ({level:.0f} dBFS): the avatar learns lip sync from "
                     "speech, so give a track with speech via audio=<file>.")
        write_wav(ctx.layout.audio, wav, self.sample_rate)
        out = probe(ctx.layout.video)
        self._write_preview(ctx.layout)
        meta = {
            "fps": self.fps, "num_frames": num_frames, "width": out.width, "height": out.height,
            "source": str(ctx.video), "source_id": file_identity(ctx.video), "source_fps": round(info.fps, 4),
            "duration": num_frames / self.fps, "source_rotation": info.rotation,
            "audio_source": str(audio_source), "audio_source_id": file_identity(audio_source),
            "sample_rate": self.sample_rate, "audio_db": round(level, 1),
            "warnings": list(ctx.warnings),
        }
        write_text(ctx.layout.meta, json.dumps(meta, indent=2))
        return {"frames": num_frames, "size": f"{out.width}x{out.height}", "source_fps": round(info.fps, 2)}

    def _source_audio(self, ctx: StepContext, info: VideoInfo) -> tuple[np.ndarray, Path]:
        """The replacement track if given, else the video's own; mono float32 at the target rate."""
        if ctx.audio is not None:
            return load_audio(ctx.audio, self.sample_rate), Path(ctx.audio)
        if not info.has_audio:
            raise ErnerfError(f"{info.path} has no audio track: give one with audio=<file> "
                              "(speech recorded with this video, wav/mp3/m4a).")
        return load_audio(info.path, self.sample_rate), info.path

    def _target_duration(self, ctx: StepContext, info: VideoInfo, wav: np.ndarray) -> float:
        """Seconds of video to keep: the video, capped by max_duration and by a shorter replacement track."""
        audio_seconds = len(wav) / self.sample_rate
        duration = info.duration
        if duration <= 0:  # raw streams carry no duration: the sound track's length stands in for it
            duration = audio_seconds
        if self.max_duration is not None and duration > self.max_duration:
            ctx.warn(f"the video is {duration:.1f} s long: keeping the first {self.max_duration:.1f} s "
                     "(preprocess.steps.ingest.max_duration).")
            duration = self.max_duration
        if ctx.audio is not None and info.duration > 0 and abs(audio_seconds - duration) > 1.0:
            if audio_seconds < duration:
                ctx.warn(f"audio {ctx.audio} ({audio_seconds:.1f} s) is shorter than the video ({duration:.1f} s): "
                         "keeping only the video's first part, which has sound.")
                duration = audio_seconds
            else:
                ctx.warn(f"audio {ctx.audio} ({audio_seconds:.1f} s) is longer than the video ({duration:.1f} s): "
                         "its end is cut.")
        if duration < self.min_duration:
            raise ErnerfError(f"{info.path} gives only {duration:.1f} s of usable video (with sound); at least "
                              f"{self.min_duration:.1f} s are needed (3-10 minutes train well): give a longer clip.")
        return duration

    def _normalise_video(self, info: VideoInfo, dst: Path, duration: float,
                         on_frame: Callable[[int], object] | None = None) -> int:
        """Write the normalised video (ffmpeg applies display rotation); return the frames written.

        A previous good `dst` is only replaced once the new one passed the checks.
        """
        with atomic_path(dst) as tmp:
            num_frames = None
            if duration >= info.duration and self._already_normal(info):
                num_frames = self._remux(info, tmp)
            if num_frames is None:
                num_frames = self._encode(info, tmp, duration, on_frame)
            self._check_complete(info, duration, num_frames)
        return num_frames

    def _remux(self, info: VideoInfo, out: Path) -> int | None:
        """Copy the video stream as is; None if the copy lost frames (then the decoding path decides)."""
        run_ffmpeg(["-i", str(info.path), "-map", "0:v:0", "-c:v", "copy", "-an", "-movflags", "+faststart",
                    str(out)], what=f"copying the video of {info.path}")
        num_frames = probe(out).num_frames
        return num_frames if num_frames == info.num_frames else None

    def _encode(self, info: VideoInfo, out: Path, duration: float,
                on_frame: Callable[[int], object] | None = None) -> int:
        """Re-encode to H.264 yuv420p at constant fps, even size, square pixels."""
        # fps's start_time=0 pads or drops at the start so frame i shows time i/fps, the same clock
        # as the audio, which load_audio also aligns to t=0 (odd or variable-rate inputs stay in sync).
        vf = f"fps={self.fps}:start_time=0,scale=trunc(iw/2)*2:trunc(ih/2)*2,setsar=1"
        run_ffmpeg(["-i", str(info.path), "-map", "0:v:0", "-vf", vf, "-t", f"{duration:.6f}", "-an",
                    "-c:v", "libx264", "-preset", self.preset, "-crf", str(self.crf), "-pix_fmt", "yuv420p",
                    "-movflags", "+faststart", str(out)], what=f"normalising {info.path}", on_frame=on_frame)
        return probe(out).num_frames

    def _already_normal(self, info: VideoInfo) -> bool:
        """H.264 yuv420p, even size, upright, and every frame exactly 1/fps after the last from t=0:
        then a lossless remux meets the contract and saves the whole re-encode."""
        if info.rotation or info.width % 2 or info.height % 2:
            return False
        try:
            with av.open(str(info.path)) as container:
                vs = container.streams.video[0]
                sar = vs.codec_context.sample_aspect_ratio
                if vs.codec_context.name != "h264" or vs.codec_context.pix_fmt != "yuv420p" or (sar and sar != 1):
                    return False
                if any(s.start_time for s in container.streams) or not vs.time_base:
                    return False  # streams starting late or early need the re-timing of the slow path
                pts = np.sort([p.pts for p in container.demux(vs) if p.pts is not None])
                steps = np.diff(pts) * float(vs.time_base)
        except (av.error.FFmpegError, OSError, ValueError):
            return False  # damaged: the decoding path reports it
        return len(pts) > 1 and pts[0] == 0 and bool(np.allclose(steps, 1 / self.fps, atol=1e-4))

    def _check_complete(self, info: VideoInfo, duration: float, num_frames: int) -> None:
        """A truncated download decodes fewer frames than its header promises: refuse a half dataset."""
        if num_frames == 0:
            raise ErnerfError(f"no frame of {info.path} could be decoded: the file is corrupt; re-export it.")
        expected = int(round(duration * self.fps)) if info.duration > 0 else 0  # nothing promised, nothing missing
        if num_frames < expected * (1.0 - TRUNCATION_TOLERANCE) - 2:
            raise ErnerfError(
                f"{info.path} is truncated or damaged: its header promises {duration:.1f} s but only "
                f"{num_frames / self.fps:.1f} s could be decoded. Re-download or re-export the video."
            )
        if num_frames / self.fps < self.min_duration:
            raise ErnerfError(f"{info.path} decodes to only {num_frames / self.fps:.1f} s; at least "
                              f"{self.min_duration:.1f} s are needed: give a longer clip.")

    def _write_preview(self, layout: SubjectLayout) -> None:
        import cv2

        first = next(iter_frames(layout.video, stop=1), None)
        if first is None:
            raise ErnerfError(f"{layout.video} has no readable frame after normalising: re-export the input video.")
        with atomic_path(layout.preview) as tmp:
            cv2.imwrite(str(tmp), cv2.cvtColor(first, cv2.COLOR_RGB2BGR))


def _reject_still_image(info: VideoInfo) -> None:
    """A photo opens as a one-frame video: say so rather than fail later on its length."""
    try:
        with av.open(str(info.path)) as container:
            frames = sum(1 for _, _ in zip(range(2), container.decode(video=0)))
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise ErnerfError(f"cannot decode {info.path} ({exc}): the file is corrupt; re-export or re-download it.") \
            from exc
    if frames < 2:
        raise ErnerfError(f"{info.path} is a still image (or holds a single frame): give a video of the subject "
                          "talking, 3-10 minutes long.")


def file_identity(path: Path | str) -> dict[str, Any]:
    """Size and a hash of the first and last MiB: equal for a moved or renamed copy, quick for any length."""
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        digest.update(f.read(IDENTITY_BYTES))
        f.seek(max(size - IDENTITY_BYTES, IDENTITY_BYTES))
        digest.update(f.read())
    return {"size": size, "sha1_ends": digest.hexdigest()}


def check_same_source(layout: SubjectLayout, video: Path | str, audio: Path | str | None = None) -> None:
    """Refuse a video= (or audio=) other than the one the subject was ingested from: it would be ignored."""
    meta = json.loads(layout.meta.read_text())
    for arg, key, given in (("video", "source", video), ("audio", "audio_source", audio)):
        if given is None or key not in meta:
            continue
        if not Path(given).is_file():
            raise ErnerfError(f"{arg}={given} does not exist: check the path, or leave {arg}= out to keep "
                              f"{layout.root} as made from {meta[key]}.")
        if not _same_input(meta, key, Path(given)):
            redo = preprocess_command(layout, force="ingest", sources=_given(video, audio))
            raise ErnerfError(f"{layout.root} was made with {arg} {meta[key]}, not {arg}={given}: give the new "
                              f"{arg} another subject=<name>, or redo this subject from it with `{redo}` "
                              "(its current dataset stays until that run succeeds).")


def _same_input(meta: dict[str, Any], key: str, given: Path) -> bool:
    """Whether `given` is the file recorded under `key`, by identity (its path may have changed)."""
    recorded = meta.get(f"{key}_id")
    if recorded is not None:
        return file_identity(given) == recorded
    old = Path(meta[key])  # a dataset made before identities were recorded: compare what there is
    if old.is_file():
        return file_identity(old) == file_identity(given)
    return key != "source" or _same_video_facts(meta, given)


def _same_video_facts(meta: dict[str, Any], video: Path) -> bool:
    """Whether `video` could be the recorded source: same frame rate and size, at least as long as the dataset."""
    info = probe(video)
    width, height = (info.height, info.width) if info.rotation in (90, 270) else (info.width, info.height)
    size = (width // 2 * 2, height // 2 * 2)  # ingest evens the size
    return (abs(info.fps - float(meta.get("source_fps", info.fps))) < 0.01
            and size == (meta.get("width", size[0]), meta.get("height", size[1]))
            and info.duration + 0.5 >= float(meta.get("duration", 0.0)))


def _given(video: Path | str, audio: Path | str | None) -> list[str]:
    return [f"video={video}", *([f"audio={audio}"] if audio is not None else [])]
