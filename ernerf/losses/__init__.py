"""ernerf.losses: small pure loss functions and the LossComposer that weights and sums them."""

from ernerf.losses.composer import LossComposer
from ernerf.losses.perceptual import DssimPatchLoss, LpipsPatchLoss, dssim, lip_perceptual, torso_alpha_loss
from ernerf.losses.photometric import (
    attention_outside_mask,
    eye_audio_overlap,
    l1,
    opacity_entropy,
    photometric_mse,
    uncertainty_weighted_mse,
)

__all__ = [
    "DssimPatchLoss",
    "LossComposer",
    "LpipsPatchLoss",
    "attention_outside_mask",
    "dssim",
    "eye_audio_overlap",
    "l1",
    "lip_perceptual",
    "opacity_entropy",
    "photometric_mse",
    "torso_alpha_loss",
    "uncertainty_weighted_mse",
]
