"""Audio I/O: any file -> 16 kHz mono float32, PCM16 wav written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ernerf.errors import ErnerfError
from ernerf.io.audio import fit_length, load_audio, loudness_db, write_wav
from tests.conftest import shared_clip


def _sine(freq: float, sr: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(int(sr * seconds)) / sr)).astype(np.float32)


def _peak_hz(wav: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(wav))
    return float(np.fft.rfftfreq(len(wav), 1 / sr)[np.argmax(spectrum)])


def test_wav_round_trip_is_pcm16_exact(tmp_path: Path) -> None:
    wav = _sine(440, 16000, 1.0)
    write_wav(tmp_path / "a.wav", wav, 16000)
    info = sf.info(tmp_path / "a.wav")
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    back = load_audio(tmp_path / "a.wav")
    assert len(back) == len(wav) and np.abs(back - wav).max() < 1 / 2**14
    assert not list(tmp_path.glob(".tmp.*"))


def test_stereo_48k_is_resampled_to_mono_16k(tmp_path: Path) -> None:
    left, right = _sine(440, 48000, 2.0), _sine(440, 48000, 2.0)
    sf.write(tmp_path / "s.wav", np.stack([left, right], 1), 48000)
    wav = load_audio(tmp_path / "s.wav", sr=16000)
    assert wav.dtype == np.float32 and abs(len(wav) - 32000) <= 16
    assert abs(_peak_hz(wav, 16000) - 440) < 2
    assert abs(loudness_db(wav) - loudness_db(left)) < 0.5  # same level: a sine of amp 0.5 is -9 dBFS
    sf.write(tmp_path / "l.wav", np.stack([left, np.zeros_like(left)], 1), 48000)
    half = load_audio(tmp_path / "l.wav")  # one silent channel: the average is half the amplitude
    assert abs(loudness_db(half) - (loudness_db(left) - 6.02)) < 0.5


def test_audio_from_a_video_file() -> None:
    wav = load_audio(shared_clip("train/trump_10s.mp4"))
    assert abs(len(wav) / 16000 - 10.0) < 0.05 and -40 < loudness_db(wav) < -5


def test_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ErnerfError, match="audio file not found"):
        load_audio(tmp_path / "missing.wav")
    with pytest.raises(ErnerfError, match="has no audio stream"):
        load_audio(shared_clip("edge/no_audio_track_portrait.mp4"))
    (tmp_path / "junk.wav").write_bytes(b"RIFF" + bytes(100))
    with pytest.raises(ErnerfError, match="cannot decode audio"):
        load_audio(tmp_path / "junk.wav")


def test_fit_length_and_loudness_are_exact() -> None:
    wav = np.ones(10, dtype=np.float32)
    assert np.array_equal(fit_length(wav, 4), wav[:4])
    assert np.array_equal(fit_length(wav, 12), np.r_[wav, 0, 0])
    assert loudness_db(np.zeros(100)) == pytest.approx(-120.0)
    assert loudness_db(np.ones(100)) == pytest.approx(0.0)
