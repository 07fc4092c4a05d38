"""Training-time augmentation of log-mel audio windows towards other speakers and recordings.

The audio network of one subject hears one voice through one microphone. Drawn afresh for every training window:
- a vocal tract length perturbation (VTLP, Jaitly & Hinton 2013): the spectrum stretched along frequency by a factor
  `alpha`, so formants (and harmonics) sit where a shorter or longer vocal tract would put them: band `b` at
  frequency `f_b` takes the value of the original spectrum at `f_b / alpha`;
- a gain: an additive constant on log power, as a louder or quieter recording gives.
Both act on the band axis of ER-NeRF's window ([..., C]), on the device, without a host sync, so a CUDA-graphed
training step draws a new perturbation at every replay.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ernerf.audio.features import _LOG_HZ, _LOG_MEL, _LOG_STEP, _MEL_HZ, SILENCE_POWER, hz_to_mel, mel_to_hz
from ernerf.errors import ErnerfError

LOG_FLOOR = math.log(SILENCE_POWER)  # LogMelExtractor's row of digital silence


def _hz_to_mel(hz: Tensor) -> Tensor:
    """`features.hz_to_mel` on a tensor (Slaney's scale)."""
    log_part = _LOG_MEL + torch.log(torch.clamp(hz, min=_LOG_HZ) / _LOG_HZ) / _LOG_STEP
    return torch.where(hz >= _LOG_HZ, log_part, hz / _MEL_HZ)


LOG_MEL_KINDS = ("mel", "meln", "melen")  # conf/audio_features/ kinds whose columns are LogMelExtractor's bands
NORMALISED_KINDS = ("meln", "melen")  # their extractor removes any gain itself


class SpeakerAugment:
    """Random frequency warp and gain of log-mel windows `[..., n_mels]` whose bands are LogMelExtractor's.

    max_warp: alpha is drawn log-uniformly in [1 / max_warp, max_warp] (1: no warp). gain_db: the gain is uniform in
    +-gain_db decibels of power (0: none), applied to the raw `mel` kind only: the normalised kinds remove any gain
    themselves, so one on their windows would be noise the real features never show. Raw `mel` values stay at or
    above the extractor's silence floor. feature_kind: the audio_features kind trained on (an error for other kinds).
    """

    def __init__(self, n_mels: int = 80, fmin: float = 55.0, fmax: float = 7600.0, max_warp: float = 1.2,
                 gain_db: float = 6.0, feature_kind: str = "mel") -> None:
        if feature_kind not in LOG_MEL_KINDS:
            raise ErnerfError(f"audio_augment=vtlp perturbs log-mel bands, and {feature_kind!r} features have none: "
                              "train without audio_augment=vtlp, or with audio_features=mel.")
        if max_warp < 1.0:
            raise ErnerfError(f"audio_augment.max_warp={max_warp} must be >= 1 (alpha in [1/max_warp, max_warp]).")
        if gain_db < 0:
            raise ErnerfError(f"audio_augment.gain_db={gain_db} must be >= 0.")
        normalised = feature_kind in NORMALISED_KINDS
        gain_db = 0.0 if normalised else gain_db
        self.floor = -math.inf if normalised else LOG_FLOOR  # normalised rows have no silence floor of their own
        self.n_mels, self.log_warp, self.gain = n_mels, math.log(max_warp), gain_db / 10.0 * math.log(10.0)
        edges = np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2)  # the filterbank's, in mels
        self.first_centre, self.step = float(edges[1]), float(edges[2] - edges[1])  # band b's centre: first + b * step
        self.centre_hz = torch.from_numpy(mel_to_hz(edges[1:-1]))  # [C] float64: alpha 1 reads each band exactly

    def source_bands(self, alpha: Tensor) -> Tensor:
        """Fractional band of the original window that each band reads under warp `alpha` [1]. # -> [C]"""
        if self.centre_hz.device != alpha.device:  # moved once, at the warm-up before a CUDA graph's capture
            self.centre_hz = self.centre_hz.to(alpha.device)
        source_mel = _hz_to_mel(self.centre_hz / alpha.double())
        return ((source_mel - self.first_centre) / self.step).clamp(0, self.n_mels - 1)

    def warp(self, window: Tensor, alpha: Tensor) -> Tensor:
        """`window` [..., C] stretched along frequency by `alpha` [1] (linear between bands)."""
        if window.shape[-1] != self.n_mels:
            raise ErnerfError(f"audio_augment works on {self.n_mels} mel bands, the features have {window.shape[-1]}: "
                              "set its n_mels to the features' (audio_features.feature_dim) or train without it.")
        position = self.source_bands(alpha)
        low = position.floor().long().clamp(max=self.n_mels - 2)
        frac = (position - low).to(window.dtype)
        return window[..., low] * (1 - frac) + window[..., low + 1] * frac

    def __call__(self, window: Tensor) -> Tensor:
        """A new random warp and gain of one training window [..., C] (one draw for the whole window)."""
        draws = torch.rand(2, device=window.device)
        alpha = torch.exp((2 * draws[:1] - 1) * self.log_warp)
        gain = (2 * draws[1:] - 1) * self.gain
        return torch.clamp(self.warp(window, alpha) + gain, min=self.floor)
