"""Offline speech synthesis: text to a wav file, sentence by sentence, through a pluggable `SpeechEngine`.

The built-in engine is the libespeak-ng that the espeakng-loader wheel ships (ctypes, no network); conf/tts/ picks
the engine for `python infer.py text=...`. librosa and soundfile are imported only by `write_wav` (the sample's
resampling): inference machines may lack them (tests/test_infer_minimal_deps.py).
"""

from __future__ import annotations

import ctypes
import functools
import re
import threading
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from ernerf.errors import ErnerfError
from ernerf.io.atomic import atomic_path
from ernerf.io.audio import to_pcm16

# Values of the enums in espeak-ng's speak_lib.h (stable public API since espeak 1.x).
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_ESPEAK_CHARS_UTF8 = 1
_ESPEAK_RATE, _ESPEAK_VOLUME, _ESPEAK_PITCH = 1, 2, 3
_EE_OK = 0

# int callback(short *wav, int numsamples, espeak_EVENT *events); a non-zero return aborts synthesis.
_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class _Espeak:
    """The process-wide espeak-ng engine: the C library keeps global state, so it is set up once and locked."""

    def __init__(self) -> None:
        try:  # imported here: inference imports this module, and without text= needs no speech engine installed
            import espeakng_loader
        except ImportError as exc:
            raise ErnerfError("text= needs the espeak-ng engine: pip install espeakng-loader==0.2.4") from exc
        try:
            self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
            data = espeakng_loader.get_data_path()
        except (OSError, RuntimeError) as exc:
            raise ErnerfError(
                f"cannot load libespeak-ng from espeakng-loader ({exc}); reinstall it: pip install espeakng-loader==0.2.4"
            ) from exc
        self._declare()
        # espeak-ng accepts either the espeak-ng-data folder or its parent.
        rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data.encode(), 0)
        if rate <= 0:
            raise ErnerfError(f"espeak_Initialize failed with data at {data}; reinstall espeakng-loader.")
        self.sample_rate = int(rate)
        self.lock = threading.Lock()
        self._chunks: list[np.ndarray] = []
        self._callback = _SynthCallback(self._collect)  # kept on self: ctypes must not free it
        self.lib.espeak_SetSynthCallback(self._callback)

    def _declare(self) -> None:
        lib = self.lib
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        for fn in (lib.espeak_SetVoiceByName, lib.espeak_SetParameter, lib.espeak_Synth, lib.espeak_Synchronize):
            fn.restype = ctypes.c_int

    def _collect(self, wav, numsamples: int, events) -> int:
        if wav and numsamples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(numsamples,)).copy())
        return 0

    def speak(self, text: str, voice: str, rate: int, pitch: int) -> np.ndarray:
        """Synthesize `text` and return the int16 samples."""
        with self.lock:
            if self.lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
                raise ErnerfError(f"espeak-ng has no voice {voice!r}: give voice= a language code such as en, en-us, "
                                  "de, fr, es.")
            self.lib.espeak_SetParameter(_ESPEAK_RATE, int(rate), 0)
            self.lib.espeak_SetParameter(_ESPEAK_PITCH, int(pitch), 0)
            self.lib.espeak_SetParameter(_ESPEAK_VOLUME, 100, 0)
            self._chunks = []
            buf = ctypes.create_string_buffer(text.encode("utf-8"))
            err = self.lib.espeak_Synth(buf, len(buf), 0, _POS_CHARACTER, 0, _ESPEAK_CHARS_UTF8, None, None)
            self.lib.espeak_Synchronize()
            chunks, self._chunks = self._chunks, []
        if err != _EE_OK:
            raise ErnerfError(f"espeak-ng failed to synthesize {text[:40]!r} (error {err}).")
        return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)


_ENGINE: _Espeak | None = None


def _engine() -> _Espeak:
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = _Espeak()
    return _ENGINE


def synthesize(text: str, voice: str = "en", rate: int = 150, pitch: int = 45) -> tuple[np.ndarray, int]:
    """Speak `text` offline; returns (float32 mono waveform in [-1, 1], sample rate in Hz).

    `rate` is words per minute (80-450), `pitch` 0-99 (50 is the voice's default).
    """
    if not text.strip():
        raise ErnerfError("synthesize got empty text: give a sentence to speak.")
    if not 80 <= rate <= 450 or not 0 <= pitch <= 99:
        raise ErnerfError(f"rate={rate} / pitch={pitch} out of range: rate 80-450 words per minute, pitch 0-99.")
    engine = _engine()
    pcm = engine.speak(text, voice, rate, pitch)
    if pcm.size == 0:
        raise ErnerfError(f"espeak-ng produced no audio for {text[:40]!r}; check the text and voice={voice!r}.")
    return pcm.astype(np.float32) / 32768.0, engine.sample_rate


def write_wav(path: Path | str, wav: np.ndarray, sample_rate: int, target_rate: int | None = None) -> Path:
    """Write mono float audio as PCM16 WAV atomically, resampled to `target_rate` if given."""
    import librosa  # here, not at the top: see the module's docstring
    import soundfile as sf

    if target_rate is not None and target_rate != sample_rate:
        wav = librosa.resample(wav, orig_sr=sample_rate, target_sr=target_rate)
        sample_rate = target_rate
    path = Path(path)
    with atomic_path(path) as tmp:
        sf.write(str(tmp), np.clip(wav, -1.0, 1.0), sample_rate, subtype="PCM_16", format="WAV")
    return path


# ---------------------------------------------------------------- engines and long texts


class SpeechEngine(Protocol):
    """A text-to-speech engine (conf/tts/): one sentence in, its waveform out."""

    @property
    def sample_rate(self) -> int:  # Hz of what `synthesize` returns
        ...

    @property
    def sentence_pause(self) -> float:  # seconds of silence speak_to_wav puts between two sentences
        ...

    def synthesize(self, text: str) -> np.ndarray:  # a sentence -> float32 mono in [-1, 1] [T]
        ...


WORDS_PER_MINUTE = (80, 450)  # espeak-ng's rate range


class EspeakSpeech:
    """espeak-ng as a SpeechEngine: `voice` a language code (en, en-us, de, fr...), `words_per_minute` 80-450."""

    def __init__(self, voice: str = "en", words_per_minute: int = 150, pitch: int = 45) -> None:
        lo, hi = WORDS_PER_MINUTE
        if not isinstance(words_per_minute, (int, float)) or not lo <= words_per_minute <= hi:
            raise ErnerfError(f"speed={words_per_minute} is out of range: speed is in words per minute, {lo}-{hi} "
                              "(150 is a calm speaker).")
        if not isinstance(pitch, (int, float)) or not 0 <= pitch <= 99:
            raise ErnerfError(f"tts.pitch={pitch} is out of range: 0-99 (50 is the voice's own).")
        self.voice, self.words_per_minute, self.pitch = str(voice), int(words_per_minute), int(pitch)

    @property
    def sample_rate(self) -> int:
        return _engine().sample_rate

    @functools.cached_property
    def sentence_pause(self) -> float:
        """The pause espeak-ng makes between two sentences of one text at this voice and rate: a sentence synthesised
        alone ends without it. It shrinks faster than the rate grows, so it is measured, not scaled."""
        one, two = (len(self.synthesize(t)) for t in ("Yes.", "Yes. Yes."))
        return max(0.0, (two - 2 * one) / self.sample_rate)

    def synthesize(self, text: str) -> np.ndarray:
        return synthesize(text, self.voice, self.words_per_minute, self.pitch)[0]


MAX_SENTENCE_CHARS = 300  # a sentence longer than this is cut at a comma or a space: the engine's buffer stays small
_SENTENCE_END = re.compile(r"(?<=[.!?;\u2026])\s+|(?<=[\u3002\uff01\uff1f\uff1b])|\n\s*\n")  # CJK 。！？； end a sentence with no space after


def split_sentences(text: str, max_chars: int = MAX_SENTENCE_CHARS) -> Iterator[str]:
    """The sentences of `text`, whitespace collapsed, none longer than `max_chars`; pieces with nothing to say
    (no letter or digit) are left out."""
    for part in _SENTENCE_END.split(text):
        part = " ".join(part.split())
        while len(part) > max_chars:
            cut = max(part.rfind(", ", 0, max_chars) + 1, part.rfind(" ", 0, max_chars))
            cut = cut if cut > max_chars // 3 else max_chars
            head, part = part[:cut].strip(), part[cut:].strip()
            if any(c.isalnum() for c in head):
                yield head
        if any(c.isalnum() for c in part):
            yield part


@dataclass(frozen=True)
class SpokenText:
    """A synthesised text on disk."""

    path: Path
    seconds: float
    sentences: int
    sample_rate: int


def spoken_parts(engine: SpeechEngine, text: str) -> Iterator[tuple[np.ndarray, bool]]:
    """(float32 audio, whether it is a sentence) in order: each sentence of `text` synthesised when it is asked for,
    the engine's `sentence_pause` of silence before each one after the first that makes a sound."""
    pause = np.zeros(int(round(engine.sentence_pause * int(engine.sample_rate))), np.float32)
    for k, sentence in enumerate(split_sentences(text)):
        audio = np.asarray(engine.synthesize(sentence), np.float32)
        if k and len(audio):
            yield pause, False
        yield audio, True


def speak_to_wav(engine: SpeechEngine, text: str, path: Path | str) -> SpokenText:
    """Synthesise `text` sentence by sentence into a PCM16 wav at the engine's rate, written atomically, with the
    engine's `sentence_pause` of silence between sentences.

    Each sentence is written before the next is synthesised, so memory holds one sentence whatever the text's length.
    """
    path, rate = Path(path), int(engine.sample_rate)
    sentences = samples = 0
    # unbuffered: each sentence reaches the file before the next is made (wave patches the header as it goes)
    with atomic_path(path) as tmp, open(tmp, "wb", buffering=0) as file, wave.open(file, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        for audio, is_sentence in spoken_parts(engine, text):
            pcm = to_pcm16(audio)
            out.writeframes(pcm.tobytes())
            sentences, samples = sentences + is_sentence, samples + len(pcm)
        if samples == 0:
            raise ErnerfError("text= has nothing to say (no letters or digits, or the engine made no sound): give "
                              "the words to speak.")
    return SpokenText(path, samples / rate, sentences, rate)
