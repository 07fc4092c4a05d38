"""Offline speech synthesis through libespeak-ng, and long texts spoken sentence by sentence into a wav file."""

from __future__ import annotations

from pathlib import Path

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


# ---------------------------------------------------------------- long texts, sentence by sentence


def test_sentences_are_split_at_their_ends_and_long_ones_cut() -> None:
    from ernerf.apps.tts import split_sentences

    text = "Hello there. Is it 10:30?  Yes!\n\nNew paragraph without a stop\n\n... -- ...\n你好。世界！ Zoë's café; naïve."
    assert list(split_sentences(text)) == ["Hello there.", "Is it 10:30?", "Yes!", "New paragraph without a stop",
                                           "你好。", "世界！", "Zoë's café;", "naïve."]
    run_on = "word, " * 200  # 1200 characters and no full stop
    pieces = list(split_sentences(run_on, max_chars=100))
    assert all(len(p) <= 100 for p in pieces) and len(pieces) >= 12
    assert " ".join(pieces).split() == run_on.split()  # nothing lost or repeated at the cuts
    assert list(split_sentences("x" * 250, max_chars=100)) == ["x" * 100, "x" * 100, "x" * 50]  # no space: hard cuts


class CountingEngine:
    """A SpeechEngine that makes 0.1 s of tone per character and checks, at every call, that the sentences before
    it are already on disk (the text is streamed to the file, not gathered in memory first)."""

    sample_rate = 8000
    sentence_pause = 0.25

    def __init__(self, folder: Path) -> None:
        self.folder, self.calls, self.written = folder, [], 0

    def synthesize(self, text: str) -> np.ndarray:
        partial = list(self.folder.glob(".tmp.*.wav"))
        assert len(partial) == 1, "synthesis is not writing into a temporary file beside the output"
        header = 44 if self.written else 0  # a PCM wav's header, written with the first frames
        assert partial[0].stat().st_size == header + 2 * self.written, "earlier sentences are not on disk yet"
        self.calls.append(text)
        n = int(0.1 * self.sample_rate) * len(text)
        self.written += n + (2000 if len(self.calls) > 1 else 0)  # the 0.25 s pause goes before every later sentence
        return (0.3 * np.sin(np.arange(n) * 0.1)).astype(np.float32)


def test_a_long_text_is_synthesised_one_sentence_at_a_time_and_streamed(tmp_path) -> None:
    import wave

    from ernerf.apps.tts import speak_to_wav

    sentences = [f"Sentence number {i} is here." for i in range(300)]
    engine = CountingEngine(tmp_path)
    spoken = speak_to_wav(engine, " ".join(sentences), tmp_path / "talk.wav")
    assert engine.calls == sentences  # one call per sentence, in order
    assert spoken.sentences == 300 and spoken.sample_rate == 8000
    with wave.open(str(spoken.path)) as wav:
        assert wav.getframerate() == 8000 and wav.getnframes() == engine.written
    assert spoken.seconds == pytest.approx(engine.written / 8000)
    assert engine.written == sum(800 * len(s) for s in sentences) + 299 * 2000  # a pause between sentences, not after
    assert not list(tmp_path.glob(".tmp.*"))


def test_a_text_with_nothing_to_say_leaves_no_file(tmp_path) -> None:
    from ernerf.apps.tts import speak_to_wav

    with pytest.raises(ErnerfError, match="nothing to say"):
        speak_to_wav(CountingEngine(tmp_path), " ... -- !? ", tmp_path / "talk.wav")
    assert list(tmp_path.iterdir()) == []


def test_espeak_engine_speaks_each_sentence_of_a_non_ascii_text(tmp_path, monkeypatch) -> None:
    import wave

    from ernerf.apps import tts

    calls = []
    real = tts.synthesize
    monkeypatch.setattr(tts, "synthesize", lambda text, *a: calls.append(text) or real(text, *a))
    engine = tts.EspeakSpeech(voice="de", words_per_minute=170)
    assert 0.1 < engine.sentence_pause < 0.6  # espeak-ng's own pause between sentences (0.38 s at 150 words/min)
    calls.clear()
    spoken = tts.speak_to_wav(engine, "Grüße aus Köln! Zoë trinkt Café. Schön, nicht wahr?", tmp_path / "de.wav")
    assert calls == ["Grüße aus Köln!", "Zoë trinkt Café.", "Schön, nicht wahr?"]
    with wave.open(str(spoken.path)) as f:
        pcm = np.frombuffer(f.readframes(f.getnframes()), "<i2")
        assert f.getframerate() == engine.sample_rate
    assert 1.5 < spoken.seconds < 8 and np.abs(pcm).max() > 0.2 * 32768  # ~10 words at 170 per minute, and loud
    whole = len(tts.synthesize("Grüße aus Köln! Zoë trinkt Café. Schön, nicht wahr?", "de", 170, 45)[0])
    # the pauses put back between the sentences: as long as the text spoken in one piece
    assert spoken.seconds == pytest.approx(whole / engine.sample_rate, abs=0.05)


@pytest.mark.parametrize("kwargs, match", [
    ({"words_per_minute": 40}, r"speed=40 is out of range: speed is in words per minute, 80-450"),
    ({"words_per_minute": "fast"}, r"speed=fast is out of range: speed is in words per minute"),
    ({"pitch": 120}, r"tts\.pitch=120"),
])
def test_espeak_engine_settings_are_checked_when_built(kwargs: dict, match: str) -> None:
    from ernerf.apps.tts import EspeakSpeech

    with pytest.raises(ErnerfError, match=match):
        EspeakSpeech(**kwargs)
