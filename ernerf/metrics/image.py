"""Image metrics computed the way talking-head papers report them (torchmetrics under the hood)."""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

PSNR_CAP = 100.0  # identical images have infinite PSNR; report a finite cap so JSON stays valid


def _to_tensor(img: np.ndarray | torch.Tensor) -> torch.Tensor:
    """[H, W, 3] uint8 or float in [0, 1] -> [1, 3, H, W] float32 in [0, 1]."""
    t = torch.as_tensor(img)
    t = t.float() / 255.0 if t.dtype == torch.uint8 else t.float()
    return t.permute(2, 0, 1).unsqueeze(0)


def psnr(pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor,
         mask: np.ndarray | torch.Tensor | None = None) -> float:
    """PSNR in dB over the whole image or over `mask` [H, W] pixels; capped at PSNR_CAP."""
    p, t = _to_tensor(pred), _to_tensor(target)
    if mask is not None:
        m = torch.as_tensor(mask).bool()
        p, t = p[..., m], t[..., m]
    mse = torch.mean((p - t) ** 2)
    if mse <= 10 ** (-PSNR_CAP / 10):
        return PSNR_CAP
    return float(peak_signal_noise_ratio(p, t, data_range=1.0))


def weighted_psnr(renders: np.ndarray, truths: np.ndarray, weights: np.ndarray) -> float:
    """PSNR (dB) of uint8 renders against truths [T, H, W, 3], the squared error of each pixel weighted by [T, H, W]."""
    error = (((renders.astype(np.float64) - truths) / 255.0) ** 2).mean(-1)
    mse = float((error * weights).sum() / max(float(weights.sum()), 1e-12))
    return float(-10 * np.log10(max(mse, 10 ** (-PSNR_CAP / 10))))


def pasted_figures(renders: np.ndarray, truths: np.ndarray, weights: np.ndarray,
                   within: np.ndarray | None = None) -> dict[str, float]:
    """Whole-frame PSNR, PSNR over the pixels a paste-back takes from the render (weighted by its alpha `weights`
    [T, H, W]) and over its feathered edge (weighted by 4 alpha (1 - alpha): where the render meets the frame, a seam if
    they disagree); `within` [T, H, W] (0 or 1): over those pixels alone."""
    within = np.ones(weights.shape) if within is None else within
    return {"psnr": weighted_psnr(renders, truths, within),
            "pasted_psnr": weighted_psnr(renders, truths, weights * within),
            "seam_psnr": weighted_psnr(renders, truths, 4 * weights * (1 - weights) * within)}


def ssim(pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> float:
    """SSIM (Gaussian window 11, sigma 1.5) of two images."""
    return float(structural_similarity_index_measure(_to_tensor(pred), _to_tensor(target), data_range=1.0))


def bbox_crop(img: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Crop [H, W, C] to (x1, y1, x2, y2), clipped to the image."""
    h, w = img.shape[:2]
    x1, y1, x2, y2 = max(0, box[0]), max(0, box[1]), min(w, box[2]), min(h, box[3])
    return img[y1:y2, x1:x2]
