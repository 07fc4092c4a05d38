"""Per-ray image losses and ER-NeRF's regularisers, as small pure functions returning scalars."""

from __future__ import annotations

import torch
from torch import Tensor


def _masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:  # [N], [N] bool -> scalar
    """Mean over rays where mask is True (all rays when mask is None)."""
    if mask is None:
        return values.mean()
    return (values * mask).sum() / mask.sum().clamp_min(1)


def photometric_mse(pred: Tensor, target: Tensor, mask: Tensor | None = None,
                    sample_weight: Tensor | None = None) -> Tensor:  # [N, 3] x2 -> scalar
    """Mean squared colour error (over channels, then over masked rays), each ray's times `sample_weight` [N] if given."""
    mse = (pred - target).square().mean(-1)
    return _masked_mean(mse if sample_weight is None else mse * sample_weight, mask)


def l1(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:  # [N, C] x2 -> scalar
    """Mean absolute error (over channels, then over masked rays)."""
    return _masked_mean((pred - target).abs().mean(-1), mask)


def uncertainty_weighted_mse(
    pred: Tensor,  # [N, 3]
    target: Tensor,  # [N, 3]
    uncertainty: Tensor,  # [N] or [N, 1], composited along rays, >= 0
    step_factor: Tensor,  # [] training progress in [0, 1] (as LossComposer's step): ramps the uncertainty terms in
    face_mask: Tensor | None = None,  # [N] bool; None = every ray is face
    alpha: float = 0.2,
    max_weight: float = 10.0,
    uncertainty_weight: float = 1.0,
    static_weight: float = 1e-3,
    sample_weight: Tensor | None = None,  # [N] the sampler's loss weight of each ray (error-guided draws); None = 1
) -> Tensor:  # scalar
    """ER-NeRF's uncertainty-aware colour loss: uncertain rays get more weight, and the uncertainty
    is fitted to the residual (beta = u + 1) inside the face and pushed to zero outside it."""
    u = uncertainty.reshape(-1)
    mask = torch.ones_like(u, dtype=torch.bool) if face_mask is None else face_mask.reshape(-1).bool()
    mse = (pred - target).square().mean(-1)  # [N]
    ray_weight = torch.softmax(u, dim=0).detach() * u.numel()  # mean 1 over the batch
    ramped = ((1 - step_factor) + step_factor * ray_weight).clamp(0, max_weight)
    weighted = mse * (alpha + (1 - alpha) * ramped)
    if sample_weight is not None:
        weighted = weighted * sample_weight
    beta = u + 1
    residual = (pred - target).norm(dim=-1).detach()
    fit = (residual / (2 * beta.square()) + torch.log(beta).square() / 2) * mask
    static = u * ~mask
    return (weighted + step_factor * (uncertainty_weight * fit + static_weight * static)).mean()


def attention_outside_mask(attention: Tensor, mask: Tensor) -> Tensor:  # [N] or [N, 1], [N] bool -> scalar
    """ER-NeRF's ambient audio loss: audio attention of rays outside the (face or lower-face) mask."""
    return (attention.reshape(-1) * ~mask.reshape(-1).bool()).mean()


def eye_audio_overlap(eye_attention: Tensor, audio_attention: Tensor, face_mask: Tensor) -> Tensor:  # -> scalar
    """ER-NeRF's cross loss: the eye and the audio should not drive the same face regions."""
    overlap = eye_attention.reshape(-1) * audio_attention.reshape(-1).detach()
    return (overlap * face_mask.reshape(-1)).mean()


def opacity_entropy(opacity: Tensor, eps: float = 1e-5) -> Tensor:  # [N] -> scalar
    """Binary entropy (bits) of ray opacity: pushes rays to be fully empty or fully opaque."""
    a = opacity.clamp(eps, 1 - eps)
    return (-a * torch.log2(a) - (1 - a) * torch.log2(1 - a)).mean()
