"""Encode inference outputs: result.mp4 (H.264 + AAC, with the driving audio), head-only RGBA, depth side-by-side."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ernerf.constants import FPS
from ernerf.errors import ErnerfError
from ernerf.io.atomic import tmp_path_for
from ernerf.io.audio import fit_length, load_audio, write_wav
from ernerf.io.video import VideoWriter

MUX_SAMPLE_RATE = 48000  # the muxed track keeps speech quality (features use 16 kHz separately)
ALPHA_FORMATS = ("webm", "png")


def fit_audio_track(src: Path | str, dst: Path | str, num_frames: int, fps: float = FPS,
                    sr: int = MUX_SAMPLE_RATE) -> Path:
    """Decode `src` (any format) to a mono wav padded/trimmed to exactly `num_frames / fps` seconds."""
    wav = load_audio(src, sr=sr)
    return write_wav(dst, fit_length(wav, int(round(num_frames * sr / fps))), sr)


def even_size(frame: np.ndarray) -> np.ndarray:
    """Pad the right/bottom edge by one replicated pixel where a side is odd (yuv420p needs even sizes)."""
    h, w = frame.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return frame
    return cv2.copyMakeBorder(frame, 0, h % 2, 0, w % 2, cv2.BORDER_REPLICATE)


def alpha_webm_writer(path: Path | str, fps: float = FPS, crf: int = 30) -> VideoWriter:
    """A writer of RGBA frames to a VP9 webm that keeps the alpha channel (yuva420p)."""
    return VideoWriter(path, fps=fps, codec_args=["-c:v", "libvpx-vp9", "-pix_fmt", "yuva420p", "-crf", str(crf),
                                                  "-b:v", "0", "-deadline", "realtime", "-cpu-used", "8",
                                                  "-auto-alt-ref", "0"])


class PngSequenceWriter:
    """Write RGBA frames as <dir>/<i>.png (lossless, alpha kept; any editor imports a sequence)."""

    def __init__(self, folder: Path | str) -> None:
        self.path = Path(folder)
        self.path.mkdir(parents=True, exist_ok=True)
        self._count = 0

    def write(self, rgba: np.ndarray) -> None:
        """Append one [H,W,4] uint8 RGBA frame."""
        cv2.imwrite(str(self.path / f"{self._count:05d}.png"), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
        self._count += 1

    def close(self) -> Path:
        """Nothing to finish: each frame is already a file."""
        return self.path

    def abort(self) -> None:
        """Leave the frames written so far (they are complete files)."""


class ResultWriter:
    """Stream frames into result.mp4 (+ optional head RGBA and depth side-by-side), audio fitted to the frames."""

    def __init__(self, out_dir: Path | str, audio: Path | str, num_frames: int, fps: float = FPS,
                 crf: int = 18, alpha: str | None = None, depth: bool = False, name: str = "result") -> None:
        if alpha is not None and alpha not in ALPHA_FORMATS:
            raise ErnerfError(f"unknown alpha output {alpha!r}: use postprocess.alpha= one of {ALPHA_FORMATS} or null.")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.num_frames, self.fps = num_frames, fps
        self._track = fit_audio_track(audio, tmp_path_for(self.out_dir / f"{name}_audio.wav"), num_frames, fps)
        self.main = VideoWriter(self.out_dir / f"{name}.mp4", fps=fps, crf=crf, audio=self._track)
        self.depth = VideoWriter(self.out_dir / f"{name}_depth.mp4", fps=fps, crf=crf, audio=self._track) \
            if depth else None
        self.alpha = self._alpha_writer(alpha, name)
        self._written = 0

    def _alpha_writer(self, alpha: str | None, name: str) -> VideoWriter | PngSequenceWriter | None:
        if alpha == "webm":
            return alpha_webm_writer(self.out_dir / f"{name}_head.webm", fps=self.fps)
        if alpha == "png":
            return PngSequenceWriter(self.out_dir / f"{name}_head")
        return None

    def write(self, frame: np.ndarray, head_rgba: np.ndarray | None = None,
              depth_rgb: np.ndarray | None = None) -> None:
        """Append one output frame [H,W,3] RGB; the head RGBA [S,S,4] and depth colours [H,W,3] when enabled."""
        frame = even_size(frame)
        self.main.write(frame)
        if self.depth is not None:
            if depth_rgb is None:
                raise ValueError("depth output enabled but no depth frame given")
            self.depth.write(np.concatenate([frame, even_size(depth_rgb)], axis=1))
        if self.alpha is not None:
            if head_rgba is None:
                raise ValueError("alpha output enabled but no RGBA head given")
            self.alpha.write(head_rgba)
        self._written += 1

    def close(self) -> dict[str, Path]:
        """Finish every output; return {kind: path}."""
        if self._written != self.num_frames:
            self.abort()
            raise ValueError(f"{self._written} frames written, {self.num_frames} expected: audio would not match")
        try:
            outputs = {"video": self.main.close()}
            if self.depth is not None:
                outputs["depth"] = self.depth.close()
            if self.alpha is not None:
                outputs["alpha"] = self.alpha.close()
            return outputs
        finally:
            self._track.unlink(missing_ok=True)

    def abort(self) -> None:
        """Delete partial outputs."""
        for writer in (self.main, self.depth, self.alpha):
            if writer is not None:
                writer.abort()
        self._track.unlink(missing_ok=True)

    def __enter__(self) -> "ResultWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
