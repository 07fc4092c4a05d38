"""ernerf.losses: small pure loss functions and the LossComposer that weights and sums them."""

from ernerf.losses.composer import LossComposer
from ernerf.losses.photometric import (
    attention_outside_mask,
    eye_audio_overlap,
    l1,
    opacity_entropy,
    photometric_mse,
    uncertainty_weighted_mse,
)

__all__ = [
    "LossComposer",
    "attention_outside_mask",
    "eye_audio_overlap",
    "l1",
    "opacity_entropy",
    "photometric_mse",
    "uncertainty_weighted_mse",
]
