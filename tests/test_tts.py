"""Offline speech synthesis through libespeak-ng."""

from __future__ import annotations

import numpy as np
import pytest

from ernerf.errors import ErnerfError
from ernerf.apps.tts import synthesize, write_wav

SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank."  # 13 words


def _voiced_f0(wav: np.ndarray, sr: int) -> np.ndarray:
    import librosa

    # yin on loud frames only: a cheap stand-in for a voicing decision.
    f0 = librosa.yin(wav, fmin=60, fmax=400, sr=sr, frame_length=2048, hop_length=512)
    rms = librosa.feature.rms(y=wav, frame_length=2048, hop_length=512)[0][: len(f0)]
    return f0[: len(rms)][rms > 0.3 * rms.max()]


def test_sentence_is_speech_of_plausible_duration() -> None:
    wav, sr = synthesize(SENTENCE, rate=150)
    assert wav.dtype == np.float32 and wav.ndim == 1 and sr >= 16000
    seconds = len(wav) / sr
    assert 13 / 150 * 60 * 0.6 < seconds < 13 / 150 * 60 * 1.6  # 13 words at 150 words per minute ~ 5.2 s
    assert 0.2 < np.abs(wav).max() <= 1.0
    f0 = _voiced_f0(wav, sr)
    assert len(f0) > 20, "no voiced frames: this is not speech"
    assert 70 < np.median(f0) < 300  # a human voice's pitch range


def _mfcc_mean(wav: np.ndarray, sr: int) -> np.ndarray:
    import librosa

    return librosa.feature.mfcc(y=wav, sr=sr, n_mfcc=13).mean(axis=1)


def test_different_sentences_differ_and_same_sentence_repeats() -> None:
    a, sr = synthesize(SENTENCE)
    b, _ = synthesize("Seven silver spoons sat beside a shiny teapot.")
    again, _ = synthesize(SENTENCE)
    # espeak-ng adds a little random jitter, so a repeat is close, not bit-identical.
    assert abs(len(a) - len(again)) / sr < 0.02
    same = np.linalg.norm(_mfcc_mean(a, sr) - _mfcc_mean(again, sr))
    different = np.linalg.norm(_mfcc_mean(a, sr) - _mfcc_mean(b, sr))
    assert abs(len(a) - len(b)) / sr > 0.5
    assert different > 5 * same and different > 5.0


def test_rate_and_pitch_change_the_voice() -> None:
    slow, sr = synthesize(SENTENCE, rate=120)
    fast, _ = synthesize(SENTENCE, rate=240)
    assert len(fast) < 0.7 * len(slow)
    low, _ = synthesize(SENTENCE, pitch=20)
    high, _ = synthesize(SENTENCE, pitch=80)
    assert np.median(_voiced_f0(high, sr)) > 1.15 * np.median(_voiced_f0(low, sr))


def test_write_wav_resamples_to_target_rate(tmp_path) -> None:
    import soundfile as sf

    wav, sr = synthesize("Hello there.")
    path = write_wav(tmp_path / "x.wav", wav, sr, target_rate=16000)
    data, rate = sf.read(path)
    assert rate == 16000 and abs(len(data) / 16000 - len(wav) / sr) < 0.01


@pytest.mark.parametrize("kwargs, match", [
    ({"text": "   "}, "empty text"),
    ({"text": "hi", "voice": "no-such-voice"}, "no voice"),
    ({"text": "hi", "rate": 5}, "out of range"),
])
def test_bad_input_raises_a_user_error(kwargs: dict, match: str) -> None:
    with pytest.raises(ErnerfError, match=match):
        synthesize(**kwargs)
