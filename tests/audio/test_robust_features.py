"""Speaker- and channel-robust log-mel (NormalizedLogMelExtractor): what it removes, what it keeps, its window."""

from __future__ import annotations

import numpy as np
import pytest
from hydra.utils import instantiate

from ernerf.apps.checkpoints import TrainedStage, audio_extractor
from ernerf.audio.features import (FEATURE_RATE, HOP, SAMPLE_RATE, LogMelExtractor, NormalizedLogMelExtractor,
                                   cepstral_smoother, sliding_max, sliding_mean_std)
from ernerf.errors import ErnerfError
from tests.conftest import compose

SYLLABLE = 0.2  # seconds


def speechlike(seconds: float, f0: float = 120.0, seed: int = 0) -> np.ndarray:
    """Voiced 'syllables': harmonics of f0 shaped by two formants that jump every 0.2 s, loudness rising and falling."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    k = (t / SYLLABLE).astype(int)
    f1, f2 = rng.uniform(300, 800, k.max() + 1)[k], rng.uniform(900, 2200, k.max() + 1)[k]
    loud = np.abs(np.sin(np.pi * t / SYLLABLE)) * rng.uniform(0.2, 1.0, k.max() + 1)[k]
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.05 * np.sin(np.pi * t))) / SAMPLE_RATE
    wav = np.zeros_like(t)
    for h in range(1, int(7000 / f0)):  # the same envelope whatever the pitch: a formant-preserving pitch change
        gain = np.exp(-((h * f0 - f1) / 150) ** 2) + 0.6 * np.exp(-((h * f0 - f2) / 200) ** 2) + 0.05
        wav += gain * np.sin(h * phase)
    wav *= loud
    return (0.3 * wav / np.abs(wav).max() + 1e-4 * rng.standard_normal(len(t))).astype(np.float32)


def change(a: np.ndarray, b: np.ndarray) -> float:
    """How far features b are from a, relative to how much a itself varies over time (scale free)."""
    return float(np.linalg.norm(a - b) / np.linalg.norm(a - a.mean(axis=0)))


@pytest.fixture(scope="module")
def voice() -> np.ndarray:
    return speechlike(6.0)


EXTRACTORS = {"mel": LogMelExtractor(), "meln": NormalizedLogMelExtractor(),
              "melen": NormalizedLogMelExtractor(lifter=20)}


def test_a_quieter_recording_gives_the_same_normalised_features(voice) -> None:
    for name in ("meln", "melen"):
        assert change(EXTRACTORS[name](voice), EXTRACTORS[name](0.1 * voice)) < 1e-4, name
    assert change(EXTRACTORS["mel"](voice), EXTRACTORS["mel"](0.1 * voice)) > 1.0  # raw log-mel: shifted by ln(0.01)


def test_a_microphone_tilt_is_mostly_removed(voice) -> None:
    tilted = voice.copy()
    tilted[1:] -= 0.9 * voice[:-1]  # a first-order high-pass: -19 dB at 100 Hz against +5 dB at 7 kHz
    raw = change(EXTRACTORS["mel"](voice), EXTRACTORS["mel"](tilted))
    for name in ("meln", "melen"):
        assert change(EXTRACTORS[name](voice), EXTRACTORS[name](tilted)) < 0.25 < 0.5 < raw, name


def test_the_envelope_variant_is_close_across_pitch_and_raw_log_mel_is_not(voice) -> None:
    higher = speechlike(6.0, f0=190.0)  # same syllables, another speaker's pitch
    raw = change(EXTRACTORS["mel"](voice), EXTRACTORS["mel"](higher))
    cmvn = change(EXTRACTORS["meln"](voice), EXTRACTORS["meln"](higher))
    envelope = change(EXTRACTORS["melen"](voice), EXTRACTORS["melen"](higher))
    assert envelope < 0.2 and envelope < cmvn / 2 and raw > 0.5  # CMVN alone does not remove the harmonics


def test_short_audio_is_normalised_over_its_whole_length(voice) -> None:
    feats = NormalizedLogMelExtractor(window_seconds=10.0)(voice)  # 6 s < the 10 s window
    assert feats.shape == (1 + len(voice) // HOP, 80) and feats.dtype == np.float32
    np.testing.assert_allclose(feats.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(feats.std(axis=0), 1.0, atol=1e-3)


def test_rows_of_long_audio_depend_on_a_window_around_them_only() -> None:
    """Streaming: rows computed from a slice with one window (+ one frame) of context equal the long file's rows."""
    long = np.concatenate([speechlike(20.0, seed=1), 0.2 * speechlike(20.0, f0=200.0, seed=2)])  # 40 s, a new voice
    extractor = NormalizedLogMelExtractor(window_seconds=4.0)
    whole = extractor(long)
    context = 4 * FEATURE_RATE + 1  # rows in a window, and the frame's own reach
    lo, hi = 1500, 1600  # rows 30-32 s, inside the second, quieter voice
    part = extractor(long[(lo - context) * HOP: (hi + context) * HOP])
    offset = lo - context
    np.testing.assert_allclose(part[lo - offset: hi - offset], whole[lo:hi], atol=1e-4)
    shorter = extractor(long[(lo - context // 4) * HOP: (hi + context // 4) * HOP])  # a quarter window: it differs
    assert np.abs(shorter[lo - (lo - context // 4): hi - (lo - context // 4)] - whole[lo:hi]).max() > 0.01
    # the statistics followed the voice: the quiet second half is normalised as well as the first
    assert abs(whole[1200:].std() - 1.0) < 0.15 and abs(whole[:800].std() - 1.0) < 0.15


def test_sliding_statistics_match_their_definition() -> None:
    x = np.random.default_rng(0).standard_normal((50, 3)) + 100.0  # an offset: the sums are taken about the mean
    mean, std = sliding_mean_std(x, 8)
    for j, rows in ((0, x[:8]), (3, x[:8]), (25, x[21:29]), (49, x[42:])):  # 8 rows, shifted inside at the ends
        np.testing.assert_allclose(mean[j], rows.mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(std[j], rows.std(axis=0), rtol=1e-8)
    peaks = sliding_max(x[:, 0], 7)
    assert peaks.tolist() == [x[min(max(0, j - 3), 43): min(max(0, j - 3), 43) + 7, 0].max() for j in range(50)]
    assert sliding_max(x[:5, 0], 7).tolist() == [x[:5, 0].max()] * 5  # shorter than the window: all of it


def test_cepstral_smoother_keeps_smooth_envelopes_and_removes_ripple() -> None:
    smooth = cepstral_smoother(80, 20)
    bands = np.arange(80)
    envelope = np.exp(-((bands - 30) / 15.0) ** 2)
    ripple = 0.5 * np.cos(np.pi * 40 * (2 * bands + 1) / 160)  # a harmonic comb: DCT coefficient 40, 4-band period
    np.testing.assert_allclose(envelope @ smooth, envelope, atol=5e-3)
    assert np.abs(ripple @ smooth).max() < 1e-6 and np.abs((envelope + ripple) @ smooth - envelope).max() < 5e-3
    with pytest.raises(ErnerfError, match="lifter"):
        NormalizedLogMelExtractor(lifter=0)


@pytest.mark.parametrize("kind", ["meln", "melen"])
def test_robust_kinds_compose_and_checkpoints_rebuild_their_extractor(kind: str) -> None:
    cfg = compose("train", ["subject=someone", f"audio_features={kind}"])
    assert cfg.datamodule.audio_file == f"aud_{kind}.npy" and cfg.model.audio_kind == kind
    extractor = instantiate(cfg.audio_features.extractor)
    assert isinstance(extractor, NormalizedLogMelExtractor) and extractor.feature_dim == cfg.model.feature_dim
    recorded = TrainedStage(None, None, {"kind": kind, "file": f"aud_{kind}.npy",  # type: ignore[arg-type]
                                         "extractor": dict(cfg.audio_features.extractor)})
    rebuilt = audio_extractor(recorded, kind, 80)
    assert isinstance(rebuilt, NormalizedLogMelExtractor) and rebuilt.lifter == extractor.lifter
    older = TrainedStage(None, None, None)  # type: ignore[arg-type]
    assert type(audio_extractor(older, "mel", 80)) is LogMelExtractor  # a mel checkpoint keeps its raw log-mel
