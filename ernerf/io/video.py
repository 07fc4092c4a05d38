"""Video read/write on top of an ffmpeg binary: imageio-ffmpeg's (no system ffmpeg needed) or $ERNERF_FFMPEG."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from ernerf.constants import FPS
from ernerf.errors import ErnerfError


FFMPEG_ENV = ("ERNERF_FFMPEG", "IMAGEIO_FFMPEG_EXE")  # the second is imageio-ffmpeg's own variable


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary: $ERNERF_FFMPEG or $IMAGEIO_FFMPEG_EXE, else imageio-ffmpeg's, else ffmpeg on PATH."""
    for var in FFMPEG_ENV:
        if value := os.environ.get(var):
            found = shutil.which(value)
            if found is None:
                raise ErnerfError(f"{var}={value} is not an executable ffmpeg: point it at the ffmpeg binary, "
                                  "or unset it to use imageio-ffmpeg's.")
            return found
    found = _imageio_ffmpeg_exe() or shutil.which("ffmpeg")
    if found is None:
        raise ErnerfError("no ffmpeg found: `pip install imageio-ffmpeg` (it ships one), put ffmpeg on PATH, "
                          "or set ERNERF_FFMPEG=/path/to/ffmpeg.")
    return found


def _imageio_ffmpeg_exe() -> str | None:
    """The binary bundled with imageio-ffmpeg, or None when the package (or its binary) is missing."""
    try:
        import imageio_ffmpeg
    except ImportError:
        return None
    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError:  # a wheel without a binary for this platform, and none on the system
        return None


def run_ffmpeg(args: list[str], what: str, on_frame: Callable[[int], object] | None = None) -> None:
    """Run ffmpeg quietly; on failure raise ErnerfError with its last lines of output.

    `on_frame(n)` is called with the number of frames written so far, as ffmpeg reports its progress."""
    cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y"]
    if on_frame is None:
        proc = subprocess.run([*cmd, *args], capture_output=True, text=True)
        returncode, errors = proc.returncode, proc.stderr
    else:
        with tempfile.TemporaryFile("w+") as err:  # a file, not a pipe: nothing blocks while stdout is read
            with subprocess.Popen([*cmd, "-progress", "pipe:1", "-nostats", *args], stdout=subprocess.PIPE,
                                  stderr=err, text=True) as proc:
                for line in proc.stdout:
                    if line.startswith("frame="):
                        on_frame(int(line.partition("=")[2]))
            returncode = proc.returncode
            err.seek(0)
            errors = err.read()
    if returncode != 0:
        tail = "\n".join(errors.strip().splitlines()[-5:])
        raise ErnerfError(f"ffmpeg failed while {what}:\n{tail}")


@dataclass(frozen=True)
class VideoInfo:
    """What `probe` finds in a media file."""

    path: Path
    width: int
    height: int
    fps: float
    duration: float  # seconds
    num_frames: int  # estimate: from the container, else duration * fps
    rotation: int  # degrees of display rotation metadata (0, 90, 180, 270)
    has_audio: bool
    audio_sample_rate: int | None
    variable_frame_rate: bool


def probe(path: Path | str) -> VideoInfo:
    """Read stream properties; raise ErnerfError if `path` is not a readable video."""
    import av  # imported where used: rendering and training machines need no PyAV

    path = Path(path)
    if not path.is_file():
        raise ErnerfError(f"video not found: {path}. Check the path given as video=...")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ErnerfError(f"{path} has no video stream: give a video file (mp4, mov, mkv, ...).")
            vs = container.streams.video[0]
            rate = vs.average_rate or vs.guessed_rate or Fraction(25)
            fps = float(rate)
            duration = _duration_seconds(container, vs)
            n = vs.frames or int(round(duration * fps))
            rotation = _rotation(vs) or _frame_rotation(container, vs)
            audio = container.streams.audio[0] if container.streams.audio else None
            r_rate = float(vs.guessed_rate) if vs.guessed_rate else fps
            vfr = abs(r_rate - fps) > 0.01 * fps
            return VideoInfo(
                path=path,
                width=vs.codec_context.width,
                height=vs.codec_context.height,
                fps=fps,
                duration=duration,
                num_frames=int(n),
                rotation=rotation,
                has_audio=audio is not None,
                audio_sample_rate=int(audio.codec_context.sample_rate) if audio is not None else None,
                variable_frame_rate=vfr,
            )
    except ErnerfError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise ErnerfError(
            f"cannot read {path} as a video ({exc.__class__.__name__}: {exc}). "
            "The file is corrupt, truncated or not a video: re-export or re-download it."
        ) from exc


def _duration_seconds(container: av.container.InputContainer, vs: av.video.stream.VideoStream) -> float:
    if vs.duration is not None and vs.time_base is not None:
        return float(vs.duration * vs.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000  # av.time_base: container durations are in microseconds
    return 0.0


def _rotation(vs: av.video.stream.VideoStream) -> int:
    try:
        for side in vs.side_data if hasattr(vs, "side_data") else []:
            if "rotation" in str(side).lower():
                return int(round(float(side.to_ndarray()[0]))) % 360  # pragma: no cover
    except Exception:  # noqa: BLE001 - metadata is best effort
        pass
    rot = vs.metadata.get("rotate") if vs.metadata else None
    return int(rot) % 360 if rot else 0


def _frame_rotation(container: av.container.InputContainer, vs: av.video.stream.VideoStream) -> int:
    """Display rotation as FFmpeg reports it on decoded frames (newer files keep it in a display matrix)."""
    for frame in container.decode(vs):
        return int(round(getattr(frame, "rotation", 0) or 0)) % 360
    return 0


def iter_frames(path: Path | str, start: int = 0, stop: int | None = None, step: int = 1) -> Iterator[np.ndarray]:
    """Stream RGB uint8 frames [H, W, 3] one at a time (never the whole video in memory)."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise ErnerfError(f"cannot open {path} for reading frames.")
    try:
        if start:
            cap.set(cv2.CAP_PROP_POS_FRAMES, start)
        i = start
        while stop is None or i < stop:
            if not cap.grab():  # decode only; skipped frames are never converted
                break
            if (i - start) % step == 0:
                ok, bgr = cap.retrieve()
                if not ok:
                    break
                yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            i += 1
    finally:
        cap.release()


RAW_PIX_FMT = {1: "gray", 3: "rgb24", 4: "rgba"}  # channels of the frames piped in -> ffmpeg's raw format


class VideoWriter:
    """Write grey, RGB or RGBA uint8 frames through an ffmpeg pipe (H.264 mp4 unless `codec_args` say otherwise).

    Writes to a temporary name and renames on `close()`, so a killed run leaves no half file.
    """

    def __init__(self, path: Path | str, fps: float = FPS, crf: int = 18, audio: Path | str | None = None,
                 pix_fmt: str = "yuv420p", codec_args: list[str] | None = None, preset: str = "veryfast") -> None:
        from ernerf.io.atomic import tmp_path_for

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = tmp_path_for(self.path)
        self.fps, self.crf, self.audio, self.pix_fmt = fps, crf, audio, pix_fmt
        self.codec_args = codec_args or ["-c:v", "libx264", "-preset", preset, "-crf", str(crf),
                                         "-pix_fmt", pix_fmt, "-movflags", "+faststart"]
        self._proc: subprocess.Popen | None = None
        self._shape: tuple[int, ...] | None = None

    def _start(self, frame: np.ndarray) -> None:
        h, w = frame.shape[:2]
        in_fmt = RAW_PIX_FMT[1 if frame.ndim == 2 else frame.shape[2]]
        cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
               "-f", "rawvideo", "-pix_fmt", in_fmt, "-s", f"{w}x{h}", "-r", f"{self.fps}", "-i", "-"]
        if self.audio is not None:
            cmd += ["-i", str(self.audio), "-c:a", "aac", "-b:a", "128k", "-shortest"]
        cmd += [*self.codec_args, str(self._tmp)]
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        self._shape = frame.shape

    def write(self, frame: np.ndarray) -> None:
        """Append one frame (uint8, [H, W] grey, [H, W, 3] RGB or [H, W, 4] RGBA; H and W even for yuv420p)."""
        if self._proc is None:
            self._start(frame)
        if frame.shape != self._shape:
            raise ValueError(f"frame shape changed from {self._shape} to {frame.shape}")
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(np.ascontiguousarray(frame, dtype=np.uint8).tobytes())

    def close(self) -> Path:
        """Finish encoding and move the file into place."""
        import os

        if self._proc is None:
            raise ErnerfError(f"no frames were written to {self.path}")
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
        if self._proc.wait() != 0:
            raise ErnerfError(f"ffmpeg failed writing {self.path}: {err.strip()[-500:]}")
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Stop encoding and delete the partial file."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
        if self._tmp.exists():
            self._tmp.unlink()

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
