"""The numpy log-mel equals librosa's melspectrogram (what the existing subjects were trained with) on real audio.

Tolerance: the filterbank and window are compared exactly / to float64 rounding. For the features, both
sides run the FFT in float64 and round it to complex64, then sum 257 non-negative float32 terms per band:
only the summation order (BLAS vs einsum) may differ, which bounds the relative error of a band by
257 * 2**-24 ~ 1.5e-5, i.e. 1.5e-5 in log. So 1e-4 on the log-mel holds on every row and band (no mask
needed: the 1e-8 floor applies to both), and is 10^3 times smaller than anything a model could notice.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from ernerf.audio.features import (HOP, SAMPLE_RATE, LogMelExtractor, hann_window, hz_to_mel, mel_to_hz,
                                   slaney_mel_filterbank)
from ernerf.io.audio import load_audio
from tests.conftest import shared_clip

librosa = pytest.importorskip("librosa")

LOG_TOL = 1e-4
CLIPS = ["audio/radio31_8s.wav", "audio/obama_5s.wav", "train/trump_10s.mp4"]


def librosa_logmel(wav: np.ndarray, n_mels: int = 80) -> np.ndarray:
    """What LogMelExtractor computed with librosa 0.11 (the call it replaced, verbatim). # [T50, n_mels]"""
    mel = librosa.feature.melspectrogram(y=wav, sr=SAMPLE_RATE, n_fft=512, hop_length=HOP, win_length=400,
                                         n_mels=n_mels, fmin=55.0, fmax=7600.0, center=True, power=2.0)
    return np.log(np.maximum(mel, 1e-8)).T.astype(np.float32)


def test_librosa_defaults_are_the_ones_reproduced() -> None:
    """If a librosa release changes these defaults, the features trained with 0.11 are what we keep."""
    import inspect

    stft = inspect.signature(librosa.stft).parameters
    mel = inspect.signature(librosa.filters.mel).parameters
    assert stft["window"].default == "hann" and stft["pad_mode"].default == "constant"
    assert mel["htk"].default is False and mel["norm"].default == "slaney"


def test_filterbank_window_and_mel_scale_match_librosa() -> None:
    for n_mels in (80, 40):
        ours = slaney_mel_filterbank(SAMPLE_RATE, 512, n_mels, 55.0, 7600.0)
        ref = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=512, n_mels=n_mels, fmin=55.0, fmax=7600.0)
        assert ours.dtype == ref.dtype == np.float32 and np.array_equal(ours, ref)
    ref_window = librosa.util.pad_center(librosa.filters.get_window("hann", 400, fftbins=True), size=512)
    assert np.abs(hann_window(400, 512) - ref_window).max() < 1e-15
    hz = np.array([0.0, 55.0, 999.9, 1000.0, 1000.1, 4000.0, 7600.0])
    assert np.allclose(hz_to_mel(hz), librosa.hz_to_mel(hz), rtol=0, atol=1e-12)
    assert np.allclose(mel_to_hz(hz_to_mel(hz)), hz, rtol=1e-12)


@pytest.mark.parametrize("clip", CLIPS)
def test_logmel_matches_librosa_on_real_speech(clip: str) -> None:
    wav = load_audio(shared_clip(clip))
    ours, ref = LogMelExtractor()(wav), librosa_logmel(wav)
    assert ours.shape == ref.shape == (1 + len(wav) // HOP, 80) and ours.dtype == np.float32
    assert np.abs(ours - ref).max() < LOG_TOL
    assert ours.std() > 1.0  # real speech, not a floor of silence compared with itself


@pytest.mark.parametrize("num_samples", [1, 100, 511, 512, 513, 3200 + 7])
def test_logmel_matches_librosa_at_the_edges(num_samples: int) -> None:
    """Clips shorter than a window and lengths off the hop grid: same rows, same centred zero padding."""
    wav = np.random.default_rng(num_samples).uniform(-0.5, 0.5, num_samples).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # librosa warns that n_fft exceeds a short signal
        ref = librosa_logmel(wav, n_mels=40)
    assert np.abs(LogMelExtractor(n_mels=40)(wav) - ref).max() < LOG_TOL
