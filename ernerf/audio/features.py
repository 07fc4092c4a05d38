"""Audio feature extractors (50 Hz feature rows) and ER-NeRF's per-frame 16-row windows.

Every extractor maps a 16 kHz mono waveform to `[T50, C]` rows where row j describes the sound
around time `j * 0.02` s, so features from different extractors line up with the video the same way.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ernerf.constants import FEATURE_ROWS as WINDOW
from ernerf.constants import FPS, SAMPLE_RATE, SMOOTH_WINDOW
from ernerf.errors import ErnerfError

FEATURE_RATE = 50  # rows per second
HOP = SAMPLE_RATE // FEATURE_RATE  # 320 samples
SILENCE_POWER = 1e-8  # LogMelExtractor floors mel power here: digital silence is a finite, constant row


class AudioFeatureExtractor(Protocol):
    """Maps a 16 kHz mono waveform to 50 Hz feature rows."""

    feature_dim: int

    def __call__(self, wav: np.ndarray) -> np.ndarray:  # [T] -> [T50, C]
        ...


def num_rows(num_samples: int) -> int:
    """Number of 50 Hz rows for `num_samples` samples: one per hop, row 0 at t=0 (librosa's centred frames)."""
    return 1 + num_samples // HOP


def smoothing_rows(centre: int, num_rows: int, size: int = SMOOTH_WINDOW) -> np.ndarray:  # -> [size] int64
    """Feature rows of the `size` frames the audio network smooths over around row `centre`, the first and last rows
    repeated beyond the audio's ends. ER-NeRF pads with zero rows, which suit speech-recognition features, but a
    zero row of log-mel is louder than any speech and moved the mouth at a clip's or an utterance's ends
    (docs/evaluation.md, "An utterance's first and last frames")."""
    return np.clip(np.arange(centre - size // 2, centre + size - size // 2), 0, num_rows - 1)


class LogMelExtractor:
    """Log-mel spectrogram: 25 ms Hann windows every 20 ms, `n_mels` Slaney bands, natural-log power.

    Pure numpy (no librosa at run time, so inference machines need only numpy); it reproduces
    `librosa.feature.melspectrogram` with librosa 0.11's defaults, which the subjects were trained on:
    zero-padded centred frames, periodic Hann window centred in `n_fft`, power 2, Slaney mel scale and
    area normalisation (tests/audio/test_logmel_parity.py pins the two together).
    """

    def __init__(self, n_mels: int = 80, sample_rate: int = SAMPLE_RATE, n_fft: int = 512,
                 fmin: float = 55.0, fmax: float = 7600.0, win_length: int = 400) -> None:
        if sample_rate != SAMPLE_RATE:
            raise ErnerfError(f"LogMelExtractor works at {SAMPLE_RATE} Hz (got sample_rate={sample_rate}): "
                              "remove the override, audio is resampled to 16 kHz on load.")
        self.n_mels, self.sample_rate, self.n_fft, self.win_length = n_mels, sample_rate, n_fft, win_length
        self.fmin, self.fmax = fmin, fmax
        self.feature_dim = n_mels
        self._basis = slaney_mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax)

    def __call__(self, wav: np.ndarray) -> np.ndarray:
        """Log-mel rows of `wav`. # [T] -> [1 + T // 320, n_mels]"""
        power = power_spectrogram(_check_wav(wav), self.n_fft, HOP, self.win_length)
        mel = power @ self._basis.T  # [T50, n_mels]
        return np.log(np.maximum(mel, SILENCE_POWER)).astype(np.float32)


class NormalizedLogMelExtractor:
    """Speaker- and channel-robust log-mel: a level floor, optional cepstral smoothing, then per-band mean and
    variance normalisation (CMVN) over a sliding window of `window_seconds` centred on each row.

    A gain is an additive constant and a fixed microphone/room EQ an additive per-band offset in log-mel, so removing
    each band's local mean takes both away (cepstral mean normalisation: Atal 1974, Furui 1981); dividing by the
    band's spread removes how loud and how dynamic the speaker is. Loudness normalisation before the mel would add
    nothing: the mean subtraction already removes any gain. `lifter` keeps the first `lifter` DCT coefficients of the
    bands (the spectral envelope, MFCC-style, Davis & Mermelstein 1980) and maps them back to `n_mels` bands, so the
    pitch harmonics, which move with the speaker, are smoothed away while the formants that shape the mouth stay.
    `floor_db` clamps each row at that many dB below the loudest row of the window (Whisper clamps 80 dB below its
    utterance's peak): digital silence and a recording's noise floor then look alike.

    Statistics window: row j is normalised with the `window_seconds` of rows centred on it, the window shifted to
    stay inside the audio at its first and last half window; audio shorter than the window is normalised with its
    whole length, and the floor of a row is taken from that row's window too. So a row of long or streamed audio
    depends on the sound within one window of it (half a window of statistics, whose rows' floors look half a window
    further): a streaming caller needs one window of lookahead, and a long file is processed in one pass.
    """

    def __init__(self, n_mels: int = 80, window_seconds: float = 10.0, lifter: int | None = None,
                 floor_db: float = 50.0, min_std: float = 0.1, **mel_options: float) -> None:
        if lifter is not None and not 1 <= lifter <= n_mels:
            raise ErnerfError(f"lifter={lifter} must be between 1 and n_mels={n_mels} (or null for no smoothing).")
        if window_seconds <= 0:
            raise ErnerfError(f"window_seconds={window_seconds} must be positive: the CMVN statistics window.")
        self.mel = LogMelExtractor(n_mels=n_mels, **mel_options)
        self.feature_dim = n_mels
        self.window_rows = max(1, int(round(window_seconds * FEATURE_RATE)))
        self.lifter, self.min_std = lifter, min_std
        self.floor = floor_db / 10.0 * np.log(10.0)  # dB of power -> natural-log units of the log-mel
        self._smooth = None if lifter is None else cepstral_smoother(n_mels, lifter)

    def __call__(self, wav: np.ndarray) -> np.ndarray:
        """Normalised log-mel rows of `wav`. # [T] -> [1 + T // 320, n_mels]"""
        logmel = self.mel(wav).astype(np.float64)
        peak = sliding_max(logmel.max(axis=1), self.window_rows)
        logmel = np.maximum(logmel, (peak - self.floor)[:, None])
        if self._smooth is not None:
            logmel = logmel @ self._smooth
        mean, std = sliding_mean_std(logmel, self.window_rows)
        return ((logmel - mean) / np.maximum(std, self.min_std)).astype(np.float32)


def cepstral_smoother(n_bands: int, keep: int) -> np.ndarray:
    """Band -> band matrix keeping the first `keep` orthonormal DCT-II coefficients (liftering). # [C, C]"""
    k, n = np.arange(n_bands)[:, None], np.arange(n_bands)[None, :]
    dct = np.sqrt(2.0 / n_bands) * np.cos(np.pi * k * (2 * n + 1) / (2 * n_bands))  # [K, C], rows orthonormal
    dct[0] /= np.sqrt(2.0)
    return dct[:keep].T @ dct[:keep]


def _window_bounds(num_rows: int, window: int) -> tuple[np.ndarray, np.ndarray]:
    """First and one-past-last row of each row's window: `window` rows centred on it, shifted inside the audio at
    its ends (all rows when the audio is shorter). # -> [T], [T]"""
    lo = np.clip(np.arange(num_rows) - window // 2, 0, max(num_rows - window, 0))
    return lo, np.minimum(lo + window, num_rows)


def sliding_mean_std(x: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and std over each row's window of `window` rows (`_window_bounds`). # [T, C] -> 2 x [T, C]"""
    lo, hi = _window_bounds(len(x), window)
    zero = np.zeros((1, x.shape[1]))
    # sums of deviations from the global mean: cumulative sums of raw values lose precision over long audio
    centred = x - x.mean(axis=0, keepdims=True)
    s1 = np.concatenate([zero, np.cumsum(centred, axis=0)])
    s2 = np.concatenate([zero, np.cumsum(centred ** 2, axis=0)])
    count = (hi - lo)[:, None]
    mean = (s1[hi] - s1[lo]) / count
    var = np.maximum((s2[hi] - s2[lo]) / count - mean ** 2, 0.0)
    return mean + x.mean(axis=0, keepdims=True), np.sqrt(var)


def sliding_max(x: np.ndarray, window: int, block: int = 4096) -> np.ndarray:
    """Maximum over each row's window (as `sliding_mean_std`), `block` rows at a time. # [T] -> [T]"""
    lo, _ = _window_bounds(len(x), window)
    views = np.lib.stride_tricks.sliding_window_view(x, min(window, len(x)))  # view k covers rows k .. k + window - 1
    out = np.empty(len(x))
    for start in range(0, len(x), block):
        out[start: start + block] = views[lo[start: start + block]].max(axis=1)
    return out


def hann_window(win_length: int, n_fft: int) -> np.ndarray:
    """Periodic Hann window of `win_length` centred in `n_fft` zeros (librosa/scipy `fftbins=True`). # [n_fft]"""
    window = np.zeros(n_fft)
    left = (n_fft - win_length) // 2
    window[left: left + win_length] = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(win_length) / win_length)
    return window


def power_spectrogram(wav: np.ndarray, n_fft: int, hop: int, win_length: int,
                      block: int = 4096) -> np.ndarray:
    """|STFT|^2 of centred, zero-padded frames, one row per hop. # [T] -> [1 + T // hop, 1 + n_fft // 2]

    The FFT runs in float64 and is rounded to complex64 as librosa stores it, whatever numpy version
    (numpy 2 would otherwise keep float32 input in single precision); `block` frames at a time bound memory.
    """
    padded = np.pad(np.asarray(wav, dtype=np.float32), n_fft // 2)
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]  # [1 + T // hop, n_fft], a view
    window = hann_window(win_length, n_fft)
    out = np.empty((len(frames), n_fft // 2 + 1), np.float32)
    for lo in range(0, len(frames), block):
        spec = np.fft.rfft(frames[lo: lo + block] * window, axis=-1).astype(np.complex64)
        out[lo: lo + block] = np.abs(spec) ** 2
    return out


_MEL_HZ = 200.0 / 3  # Slaney: Hz per mel below 1 kHz
_LOG_HZ = 1000.0  # where the scale turns logarithmic
_LOG_MEL = _LOG_HZ / _MEL_HZ
_LOG_STEP = np.log(6.4) / 27.0  # mels per log-Hz step above 1 kHz


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """Slaney's mel scale (librosa `htk=False`): linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    log_part = _LOG_MEL + np.log(np.maximum(hz, _LOG_HZ) / _LOG_HZ) / _LOG_STEP
    return np.where(hz >= _LOG_HZ, log_part, hz / _MEL_HZ)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    """Inverse of `hz_to_mel`."""
    mel = np.asarray(mel, dtype=np.float64)
    log_part = _LOG_HZ * np.exp(_LOG_STEP * (np.maximum(mel, _LOG_MEL) - _LOG_MEL))
    return np.where(mel >= _LOG_MEL, log_part, _MEL_HZ * mel)


def slaney_mel_filterbank(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """Triangular mel filters, Slaney area-normalised (librosa.filters.mel defaults). # [n_mels, 1 + n_fft // 2]"""
    fft_hz = np.fft.rfftfreq(n_fft, 1.0 / sr)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))  # [n_mels + 2]
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_hz[None, :]
    rising, falling = -ramps[:-2] / widths[:-1, None], ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)  # rounded before scaling, as librosa
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights


class HFSpeechExtractor:
    """Hidden states of a HuBERT / wav2vec 2.0 model (transformers): a Hugging Face model id or a local folder.

    `model` is either; `model_path` is the older key (a folder), kept for configs and checkpoints that record it, and
    wins when set. A model id loads from the Hugging Face cache (`cache_dir`, default HF_HOME's), downloaded once when
    the cache lacks it and the hub is reachable. The model is loaded on first use, so a bad name surfaces as
    ErnerfError from the step that needs it rather than as a config-instantiation error.
    """

    RECEPTIVE = 400  # samples seen by one output row of the conv front end (25 ms)

    def __init__(self, model: str | None = None, model_path: str | None = None,
                 config_key: str = "audio_features.extractor.model", cache_dir: str | None = None,
                 layer: int = -1, chunk_seconds: float = 20.0, context_seconds: float = 2.0,
                 device: str = "auto") -> None:
        self.model, self.model_path, self.config_key, self.cache_dir = model, model_path, config_key, cache_dir
        self.layer, self.chunk_seconds, self.context_seconds = layer, chunk_seconds, context_seconds
        self.device = device
        self._model = None
        self._normalize = True

    @property
    def feature_dim(self) -> int:
        """Hidden size of the model (loads it)."""
        return int(self._load().config.hidden_size)

    @property
    def source(self) -> str:
        """The model folder or hub id this extractor loads."""
        source = self.model_path or self.model
        if not source:
            raise ErnerfError(f"no speech model given: set {self.config_key}=facebook/hubert-large-ls960-ft (a Hugging "
                              "Face model id) or a local model folder, or use audio_features=mel.")
        return str(source)

    def _load(self):
        if self._model is None:
            transformers = _require_transformers()
            import torch

            model, self._normalize = load_speech_model(transformers, self.source, self.config_key, self.cache_dir)
            device = ("cuda" if torch.cuda.is_available() else "cpu") if self.device == "auto" else self.device
            self._model = model.to(device).eval()
        return self._model

    def __call__(self, wav: np.ndarray) -> np.ndarray:
        """Hidden states of the chosen layer, one row per 20 ms. # [T] -> [1 + T // 320, hidden]"""
        wav = _check_wav(wav)
        model = self._load()
        if self._normalize:  # what Wav2Vec2FeatureExtractor does for these models
            wav = (wav - wav.mean()) / np.sqrt(wav.var() + 1e-7)
        n_out = num_rows(len(wav))
        # Pad so output row j is centred on sample j * HOP, like librosa's centred frames.
        half = self.RECEPTIVE // 2
        tail = max(0, self.RECEPTIVE + HOP * (n_out - 1) - len(wav) - half)
        padded = np.pad(wav, (half, tail)).astype(np.float32)
        return self._run_chunks(model, padded, n_out)

    def _run_chunks(self, model, padded: np.ndarray, n_out: int) -> np.ndarray:
        """Run the model on overlapping chunks (attention cost is quadratic in length) and stitch."""
        chunk = max(1, int(self.chunk_seconds * FEATURE_RATE))
        ctx = int(self.context_seconds * FEATURE_RATE)
        parts = []
        for start in range(0, n_out, chunk):
            stop = min(n_out, start + chunk)
            lo, hi = max(0, start - ctx), min(n_out, stop + ctx)
            rows = self._forward(model, padded[lo * HOP: (hi - 1) * HOP + self.RECEPTIVE])
            parts.append(rows[start - lo: stop - lo])
        return np.concatenate(parts, 0).astype(np.float32)

    def _forward(self, model, samples: np.ndarray) -> np.ndarray:
        import torch

        device = next(model.parameters()).device
        with torch.inference_mode():
            x = torch.from_numpy(samples)[None].to(device)
            out = model(x, output_hidden_states=self.layer != -1)
            hidden = out.last_hidden_state if self.layer == -1 else out.hidden_states[self.layer]
        return hidden[0].float().cpu().numpy()


def hub_offline() -> bool:
    """Whether the user asked transformers to stay offline (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE), read now."""
    return any(os.environ.get(k, "").strip().upper() in ("1", "ON", "YES", "TRUE")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def is_path_like(source: str) -> bool:
    """Whether `source` can only be a file-system path (a hub id is `name` or `org/name`)."""
    return source.startswith(("/", ".", "~")) or source.count("/") > 1 or "\\" in source


def load_speech_model(transformers: Any, source: str, config_key: str, cache_dir: str | None = None) -> tuple[Any, bool]:
    """(model, whether its inputs are normalised) from a local folder or a hub id. Raises ErnerfError naming the fix."""
    folder = Path(source).expanduser()
    if folder.is_dir() or is_path_like(source):
        _check_folder(folder, config_key)
        return _from_pretrained(transformers, str(folder), local_only=True)
    try:  # the cache first: no request to the hub per run, and the features keep the revision the subject used
        return _from_pretrained(transformers, source, local_only=True, cache_dir=cache_dir)
    except (OSError, ValueError) as cached_error:  # not cached; a ValueError: not a valid hub id
        if hub_offline():
            raise ErnerfError(
                f"{source} is not in the Hugging Face cache and HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE is set: run "
                f"`huggingface-cli download {source}` once online (or once without the offline setting), or set "
                f"{config_key}=/path/to/a/local/model/folder, or use audio_features=mel.") from cached_error
    try:
        return _from_pretrained(transformers, source, local_only=False, cache_dir=cache_dir)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ErnerfError(
            f"could not load the speech model {source} from the Hugging Face hub ({first[:160]}): run "
            f"`huggingface-cli download {source}` once online, or set {config_key}=/path/to/a/local/model/folder, "
            "or use audio_features=mel.") from exc


def _check_folder(folder: Path, config_key: str) -> None:
    if not folder.is_dir():
        raise ErnerfError(f"speech model folder {folder} does not exist: fix {config_key} (a local folder, or a "
                          "Hugging Face model id such as facebook/hubert-large-ls960-ft).")
    if not (folder / "config.json").is_file():
        raise ErnerfError(f"{folder} has no config.json: {config_key} must point at a saved "
                          "transformers model folder (save_pretrained / a downloaded hub snapshot).")


def _from_pretrained(transformers: Any, source: str, local_only: bool, cache_dir: str | None = None) -> tuple[Any, bool]:
    """transformers' AutoModel and the feature extractor's do_normalize (True when the model ships none)."""
    model = transformers.AutoModel.from_pretrained(source, local_files_only=local_only, cache_dir=cache_dir)
    try:
        features = transformers.AutoFeatureExtractor.from_pretrained(source, local_files_only=local_only,
                                                                     cache_dir=cache_dir)
        normalize = bool(getattr(features, "do_normalize", True))
    except (OSError, ValueError):  # no preprocessor_config.json (a bare save_pretrained of the model)
        normalize = True
    return model, normalize


def _require_transformers():
    try:
        import transformers
    except ImportError as exc:
        raise ErnerfError("HuBERT/wav2vec2 features need the transformers package: "
                          "run `pip install -e .[hub]`, or use audio_features=mel.") from exc
    return transformers


def _check_wav(wav: np.ndarray) -> np.ndarray:
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim != 1:
        raise ErnerfError(f"audio features expect mono audio [T], got shape {wav.shape}: mix down to one channel.")
    if len(wav) == 0:
        raise ErnerfError("the audio is empty: give an audio track with sound.")
    return wav


def window_starts(num_frames: int, fps: float = FPS) -> np.ndarray:
    """First 50 Hz row of each frame's window: 16 rows as symmetric as possible about the frame's mid time."""
    centre = np.rint((np.arange(num_frames) + 0.5) / fps * FEATURE_RATE).astype(np.int64)
    return centre - WINDOW // 2


def frame_windows(feats: np.ndarray, num_frames: int, fps: float = FPS) -> np.ndarray:
    """ER-NeRF's per-frame windows: frame i gets 16 rows centred on its time, edges repeat. # [T50, C] -> [N, 16, C]"""
    feats = np.asarray(feats, dtype=np.float32)
    if feats.ndim != 2 or len(feats) == 0:
        raise ErnerfError(f"audio features must be [T, C] with T > 0, got shape {feats.shape}.")
    idx = window_starts(num_frames, fps)[:, None] + np.arange(WINDOW)[None, :]
    return feats[np.clip(idx, 0, len(feats) - 1)]


def extract_features(wav_path: Path | str, extractor: AudioFeatureExtractor, num_frames: int | None = None,
                     fps: float = FPS) -> np.ndarray:
    """Windows for every video frame of an audio file (any format; resampled to 16 kHz). # -> [N, 16, C]

    `num_frames` None means as many 25 fps frames as the audio lasts (inference on new audio).
    """
    from ernerf.io.audio import load_audio

    wav = load_audio(wav_path, sr=SAMPLE_RATE)
    if num_frames is None:
        num_frames = max(1, int(round(len(wav) / SAMPLE_RATE * fps)))
    return frame_windows(extractor(wav), num_frames, fps)
