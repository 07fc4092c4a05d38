"""audio_features=phones: PocketSphinx's phone decoding as 50 Hz rows of phone shares."""

from __future__ import annotations

import builtins

import numpy as np
import pytest

from ernerf.audio.phones import PHONES, PhoneExtractor, phone_rows
from ernerf.errors import ErnerfError
from tests.conftest import shared_clip


def test_rows_are_each_phones_share_of_the_three_frames_around_the_rows_time() -> None:
    aa, m = PHONES.index("AA"), PHONES.index("M")
    labels = np.array([aa] * 4 + [m] * 6)  # 10 frames of 10 ms: AA for 40 ms, then M
    rows = phone_rows(labels, 5)  # rows at 0, 20, 40, 60, 80 ms: frames (-1..1 clipped), 0..2, 2..4, 4..6, 6..8
    assert rows.shape == (5, len(PHONES)) and np.allclose(rows.sum(1), 1)
    assert np.allclose(rows[:, aa], [1, 1, 2 / 3, 0, 0]) and np.allclose(rows[:, m], [0, 0, 1 / 3, 1, 1])


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    pytest.importorskip("pocketsphinx")
    import librosa

    from ernerf.apps.tts import synthesize

    wav, rate = synthesize("Papa made a big map of the moon.", voice="en", rate=150, pitch=45)
    return librosa.resample(wav, orig_sr=rate, target_sr=16000).astype(np.float32)


def test_speech_decodes_to_phones_and_silence_to_silence(speech: np.ndarray) -> None:
    extractor = PhoneExtractor()
    rows = extractor(speech)
    assert rows.shape == (1 + len(speech) // 320, len(PHONES)) and np.allclose(rows.sum(1), 1)
    spoken = rows[:, 1:].sum(1) > 0.5
    assert 0.3 < spoken.mean() < 1.0  # a sentence: mostly phones, silence at its ends
    assert len({int(i) for i in rows[spoken].argmax(1)}) >= 5  # several phones, not one label everywhere
    quiet = extractor(np.zeros(16000, np.float32))
    assert np.array_equal(quiet[:, 0], np.ones(len(quiet)))
    fresh = PhoneExtractor()(np.zeros(16000, np.float32))  # digital silence, no speech heard before it
    assert np.array_equal(fresh[:, 0], np.ones(len(fresh)))


@pytest.mark.parametrize("loudness", [False, True])
def test_a_quieter_voice_keeps_its_phones_and_its_level(loudness: bool) -> None:
    """The recogniser normalises its cepstra and the level column is relative to the loudest row near it: at a tenth of
    the gain (a quieter speaker, another microphone level) most rows keep their phone (the 16-bit samples the decoder
    takes lose precision, so not every row) and the level column does not move, where a gain shifts every log-mel
    band."""
    pytest.importorskip("pocketsphinx")
    from ernerf.io.audio import load_audio

    speech = load_audio(shared_clip("audio/obama_5s.wav"), sr=16000)
    extractor = PhoneExtractor(loudness=loudness)
    loud, quiet = extractor(speech), extractor(speech * 0.1)
    assert loud.shape[1] == extractor.feature_dim == 40 + loudness
    assert (loud[:, :40].argmax(1) == quiet[:, :40].argmax(1)).mean() > 0.7
    if loudness:  # the level follows the speech: loudest rows at 1, pauses far below
        assert np.allclose(loud[:, 40], quiet[:, 40], atol=1e-5)
        assert loud[:, 40].max() == 1 and np.ptp(loud[:, 40]) > 0.5


def test_without_pocketsphinx_the_error_names_the_install(monkeypatch) -> None:
    real_import = builtins.__import__

    def no_pocketsphinx(name, *args, **kwargs):
        if name == "pocketsphinx":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pocketsphinx)
    with pytest.raises(ErnerfError, match=r"pip install -e '\.\[phones\]'"):
        PhoneExtractor()(np.zeros(3200, np.float32))


@pytest.mark.parametrize("kind, width", [("phones", 40), ("phonesl", 41)])
def test_phone_kinds_compose_and_checkpoints_rebuild_their_extractor(kind: str, width: int) -> None:
    """A checkpoint trained on phone features records their extractor, and infer.py rebuilds it for new audio."""
    from hydra.utils import instantiate

    from ernerf.apps.checkpoints import TrainedStage, audio_extractor
    from tests.conftest import compose

    cfg = compose("train", ["subject=someone", f"audio_features={kind}"])
    assert cfg.datamodule.audio_file == f"aud_{kind}.npy" and cfg.model.audio_kind == kind
    extractor = instantiate(cfg.audio_features.extractor)
    assert isinstance(extractor, PhoneExtractor) and extractor.feature_dim == cfg.model.feature_dim == width
    recorded = TrainedStage(None, None, {"kind": kind, "file": f"aud_{kind}.npy",  # type: ignore[arg-type]
                                         "extractor": dict(cfg.audio_features.extractor)})
    rebuilt = audio_extractor(recorded, kind, width)
    assert isinstance(rebuilt, PhoneExtractor) and rebuilt.feature_dim == width and rebuilt.loudness == (width == 41)
