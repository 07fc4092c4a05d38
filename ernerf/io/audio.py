"""Audio read/write: any audio (or video) file -> mono float32 at a fixed rate, via the bundled ffmpeg."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

from ernerf.errors import ErnerfError
from ernerf.io.atomic import atomic_path
from ernerf.io.video import ffmpeg_exe


def load_audio(path: Path | str, sr: int = 16000, max_seconds: float | None = None) -> np.ndarray:
    """Decode the first audio stream of `path` to mono float32 in [-1, 1] at `sr` Hz. # [T]"""
    path = Path(path)
    if not path.is_file():
        raise ErnerfError(f"audio file not found: {path}. Check the path given as audio=...")
    cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-i", str(path), "-map", "0:a:0"]
    if max_seconds is not None:
        cmd += ["-t", f"{max_seconds:.6f}"]
    # first_pts=0 pads a late-starting track with silence so sample 0 is time 0, as for the video frames.
    filters = ["aresample=async=1:first_pts=0"]
    channels = _channels(path)
    if channels > 1:  # plain average: ffmpeg's own downmix adds +3 dB and can clip loud stereo speech
        filters.append("pan=mono|c0<" + "+".join(f"c{k}" for k in range(channels)))
    cmd += ["-af", ",".join(filters), "-ac", "1", "-ar", str(sr), "-f", "f32le", "-acodec", "pcm_f32le", "-"]
    proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()
        if "matches no streams" in err:
            raise ErnerfError(f"{path} has no audio stream: give a file with sound "
                              "(wav, mp3, m4a, or a video with audio).")
        tail = "\n".join(err.splitlines()[-3:])
        raise ErnerfError(f"cannot decode audio from {path}: {tail}\nThe file is corrupt or not audio: re-export it.")
    return np.frombuffer(proc.stdout, dtype=np.float32).copy()


def _channels(path: Path) -> int:
    """Channel count of the first audio stream (1 when it cannot be read; ffmpeg then reports why)."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.audio[0] if container.streams.audio else None
            return int(stream.codec_context.channels) if stream is not None else 1
    except (av.error.FFmpegError, OSError, ValueError):
        return 1


def write_wav(path: Path | str, wav: np.ndarray, sr: int = 16000) -> Path:
    """Write mono float audio as 16-bit PCM wav, atomically."""
    import soundfile as sf

    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim != 1:
        raise ValueError(f"write_wav expects mono audio [T], got shape {wav.shape}")
    path = Path(path)
    with atomic_path(path) as tmp:
        sf.write(str(tmp), np.clip(wav, -1.0, 1.0), sr, subtype="PCM_16", format="WAV")
    return path


def fit_length(wav: np.ndarray, num_samples: int) -> np.ndarray:
    """Trim or zero-pad `wav` to exactly `num_samples`. # [T] -> [num_samples]"""
    if len(wav) >= num_samples:
        return wav[:num_samples]
    return np.pad(wav, (0, num_samples - len(wav)))


def loudness_db(wav: np.ndarray) -> float:
    """RMS level in dBFS (-inf-safe: an all-zero signal gives -120)."""
    rms = float(np.sqrt(np.mean(np.square(wav, dtype=np.float64)))) if len(wav) else 0.0
    return 20.0 * np.log10(max(rms, 1e-6))
