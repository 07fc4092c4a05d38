"""Audio read/write: any audio (or video) file -> mono float32 at a fixed rate, via the bundled ffmpeg."""

from __future__ import annotations

import re
import subprocess
import wave
from pathlib import Path

import numpy as np

from ernerf.constants import SAMPLE_RATE
from ernerf.errors import ErnerfError
from ernerf.io.atomic import atomic_path
from ernerf.io.video import ffmpeg_exe


def load_audio(path: Path | str, sr: int = SAMPLE_RATE, max_seconds: float | None = None) -> np.ndarray:
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
    """Channel count of the first audio stream as `ffmpeg -i` reports it (1 when it cannot tell; decoding says why).

    Read from ffmpeg rather than PyAV so that inference machines need no PyAV (load_audio needs ffmpeg anyway).
    """
    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path)], capture_output=True)
    return channels_from_ffmpeg_info(proc.stderr.decode(errors="replace"))


# FFmpeg's named channel layouts (libavutil/channel_layout.c) that are not written "<front>.<lfe>[.<top>]"
_NAMED_LAYOUTS = {"mono": 1, "stereo": 2, "downmix": 2, "binaural": 2, "quad": 4, "hexagonal": 6,
                  "octagonal": 8, "cube": 8, "hexadecagonal": 16}


def channels_from_ffmpeg_info(info: str) -> int:
    """Channel count of the first `Audio:` stream line of `ffmpeg -i` output; 1 when there is none.

    The layout is the field after the sample rate: "mono", "stereo", "5.1(side)" (5 + 1), "22.2",
    "7.1.4" (7 + 1 + 4), "quad"..., or "N channels" when the stream has no named layout.
    """
    match = re.search(r"Stream #\d+:\d+.*?: Audio: (.*)", info)
    fields = [f.strip() for f in match.group(1).split(",")] if match else []
    rate = next((k for k, f in enumerate(fields) if re.fullmatch(r"\d+ Hz", f)), None)
    if rate is None or rate + 1 >= len(fields):
        return 1
    layout = re.sub(r"\(.*\)$", "", fields[rate + 1]).strip()  # 5.1(side) -> 5.1
    if layout in _NAMED_LAYOUTS:
        return _NAMED_LAYOUTS[layout]
    if m := re.fullmatch(r"(\d+) channels?", layout):
        return int(m.group(1))
    if re.fullmatch(r"\d+(\.\d+)+", layout):
        return sum(int(part) for part in layout.split("."))
    return 1


def write_wav(path: Path | str, wav: np.ndarray, sr: int = SAMPLE_RATE) -> Path:
    """Write mono float audio as 16-bit PCM wav, atomically (stdlib `wave`: no soundfile needed).

    Samples are clipped to [-1, 1] and quantised as libsndfile 1.2 does (what soundfile wrote before):
    floor(x * 32768), clipped to the int16 range, so 1.0 -> 32767 and -1.0 -> -32768.
    """
    pcm = to_pcm16(wav)
    path = Path(path)
    with atomic_path(path) as tmp, wave.open(str(tmp), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(int(sr))
        out.writeframes(pcm.tobytes())
    return path


def to_pcm16(wav: np.ndarray) -> np.ndarray:
    """Mono float audio as little-endian int16, quantised as write_wav says. # [T] -> [T]"""
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim != 1:
        raise ValueError(f"write_wav expects mono audio [T], got shape {wav.shape}")
    return np.clip(np.floor(np.clip(wav, -1.0, 1.0) * np.float32(32768)), -32768, 32767).astype("<i2")


def fit_length(wav: np.ndarray, num_samples: int) -> np.ndarray:
    """Trim or zero-pad `wav` to exactly `num_samples`. # [T] -> [num_samples]"""
    if len(wav) >= num_samples:
        return wav[:num_samples]
    return np.pad(wav, (0, num_samples - len(wav)))


def loudness_db(wav: np.ndarray) -> float:
    """RMS level in dBFS (-inf-safe: an all-zero signal gives -120)."""
    rms = float(np.sqrt(np.mean(np.square(wav, dtype=np.float64)))) if len(wav) else 0.0
    return 20.0 * np.log10(max(rms, 1e-6))
