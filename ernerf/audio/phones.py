"""Phone features: which English phone is being spoken, from PocketSphinx's phone recogniser.

ER-NeRF and AD-NeRF drive the mouth with speech-recognition features (DeepSpeech, HuBERT) because those say what is
said, not who says it. Without downloaded weights the nearest thing here is PocketSphinx (`pip install
pocketsphinx`): its English acoustic model, trained on many speakers, and a phone bigram model ship in the wheel, so it
runs offline. In its all-phone mode it decodes the audio into a sequence of the 39 phones of the CMU dictionary and
silence, with their times (100 frames a second). Each 50 Hz feature row is the share of each phone in the 30 ms
around the row's time: a 40-wide row with no trace of the speaker's pitch, timbre, loudness or microphone beyond what
the recogniser gets wrong.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np

from ernerf.audio.features import FEATURE_RATE, HOP, _check_wav, num_rows, power_spectrogram, sliding_max
from ernerf.constants import SAMPLE_RATE
from ernerf.errors import ErnerfError

# The CMU dictionary's 39 phones (ARPAbet, no stress) after silence; PocketSphinx's noise words count as silence.
PHONES = ("SIL", "AA", "AE", "AH", "AO", "AW", "AY", "B", "CH", "D", "DH", "EH", "ER", "EY", "F", "G", "HH", "IH",
          "IY", "JH", "K", "L", "M", "N", "NG", "OW", "OY", "P", "R", "S", "SH", "T", "TH", "UH", "UW", "V", "W", "Y",
          "Z", "ZH")
PHONE_INDEX = {p: i for i, p in enumerate(PHONES)}
FRAME_RATE = 100  # PocketSphinx frames a second (10 ms shift, 25.6 ms windows)


def _require_pocketsphinx() -> Any:
    try:
        import pocketsphinx
    except ImportError as e:
        raise ErnerfError("audio_features=phones needs PocketSphinx: pip install -e '.[phones]' (its English model "
                          "ships in the wheel), or use audio_features=mel.") from e
    return pocketsphinx


class PhoneExtractor:
    """50 Hz rows [T50, feature_dim] of phone shares (`PHONES`, 40) from PocketSphinx's all-phone decoding of 16 kHz
    audio, and with `loudness` the level beside them.

    `language_weight` weighs the phone bigram model against the acoustics (PocketSphinx's advice for phone decoding:
    2 to 10). Rows with no decoded frame near them (the audio's very end) are silence. `loudness` adds a 41st column:
    the row's level relative to the loudest row within `window_seconds` around it, 0 at `floor_db` below it and 1 at
    it (the speaker's and the microphone's level taken away, how loud this moment is against its neighbours kept)."""

    def __init__(self, language_weight: float = 2.0, beam: float = 1e-20, loudness: bool = False,
                 window_seconds: float = 10.0, floor_db: float = 50.0) -> None:
        self.language_weight, self.beam = language_weight, beam
        self.loudness, self.window_rows, self.floor_db = loudness, int(round(window_seconds * FEATURE_RATE)), floor_db
        self.feature_dim = len(PHONES) + int(loudness)
        self._decoder = None
        self._lock = threading.Lock()  # one decoder, one utterance at a time (live streams share the extractor)

    def _load(self) -> Any:
        if self._decoder is None:
            ps = _require_pocketsphinx()
            model = ps.get_model_path()
            self._decoder = ps.Decoder(hmm=os.path.join(model, "en-us", "en-us"),
                                       allphone=os.path.join(model, "en-us", "en-us-phone.lm.bin"),
                                       lw=self.language_weight, beam=self.beam, pbeam=self.beam, loglevel="ERROR")
        return self._decoder

    def segments(self, wav: np.ndarray) -> list[tuple[str, int, int]]:
        """Decoded (phone, first frame, last frame) of `wav`, frames of 10 ms."""
        # Dithered by one step of 16 bits, seeded (the same audio gives the same phones): digital silence (a TTS
        # pause, padding) has no spectrum to normalise, and the recogniser hears a fricative in it.
        dither = np.random.default_rng(0).normal(0.0, 1.0, len(wav))
        pcm = np.clip(np.clip(_check_wav(wav), -1.0, 1.0) * 32767 + dither, -32768, 32767).astype(np.int16).tobytes()
        with self._lock:
            decoder = self._load()
            decoder.start_utt()
            decoder.process_raw(pcm, full_utt=True)
            decoder.end_utt()
            return [(s.word, int(s.start_frame), int(s.end_frame)) for s in decoder.seg()]

    def __call__(self, wav: np.ndarray) -> np.ndarray:
        """Phone shares (and level) of `wav`. # [T] -> [1 + T // 320, feature_dim]"""
        wav = _check_wav(wav)
        frames = max(1, int(np.ceil(len(wav) / SAMPLE_RATE * FRAME_RATE)))
        labels = np.zeros(frames, np.int64)  # silence where nothing was decoded
        for phone, first, last in self.segments(wav):
            labels[max(first, 0): min(last, frames - 1) + 1] = PHONE_INDEX.get(phone.upper(), 0)
        rows = phone_rows(labels, num_rows(len(wav)))
        if not self.loudness:
            return rows
        return np.concatenate([rows, self.relative_level(wav)[:, None]], 1)

    def relative_level(self, wav: np.ndarray) -> np.ndarray:
        """Each 50 Hz row's level against the loudest within the window around it, in [0, 1]. # [T] -> [T50]"""
        level = 10 * np.log10(power_spectrogram(wav, 512, HOP, 400).sum(1).astype(np.float64) + 1e-10)
        relative = level - sliding_max(level, self.window_rows)
        return np.clip(1 + relative / self.floor_db, 0, 1).astype(np.float32)


def phone_rows(labels: np.ndarray, rows: int) -> np.ndarray:
    """Per-frame phone ids [F] (100 a second) -> 50 Hz rows [rows, 40] of each phone's share of the three frames
    around each row's time (row j is at 20 j ms; frame k's window is centred near 10 k + 13 ms)."""
    onehot = np.eye(len(PHONES), dtype=np.float32)[labels]  # [F, 40]
    step = FRAME_RATE * HOP // SAMPLE_RATE  # 2 frames a row
    centre = np.arange(rows) * step - 1
    idx = np.clip(centre[:, None] + np.arange(-1, 2)[None, :], 0, len(labels) - 1)  # [rows, 3]
    return onehot[idx].mean(1)
