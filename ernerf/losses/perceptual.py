"""Patch losses for the lips fine-tuning: LPIPS when its backbone is on this machine, else D-SSIM (no weights)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch.nn.functional as F
from torch import Tensor, nn

from ernerf.errors import ErnerfError

log = logging.getLogger(__name__)


def dssim(pred: Tensor, target: Tensor, window: int = 7, c1: float = 0.01**2, c2: float = 0.03**2) -> Tensor:
    """(1 - SSIM) / 2 of images [B, 3, H, W] in [0, 1] with a box window (shrunk to fit small patches).

    Written out rather than torchmetrics' SSIM, which made every lips step several times slower on a GPU
    (docs/performance.md, "The house on a GPU")."""
    size = max(1, min(window, pred.shape[-1], pred.shape[-2]))

    def mean(x: Tensor) -> Tensor:
        return F.avg_pool2d(x, size, stride=1)

    mu_p, mu_t = mean(pred), mean(target)
    var_p, var_t = mean(pred * pred) - mu_p.square(), mean(target * target) - mu_t.square()
    cov = mean(pred * target) - mu_p * mu_t
    ssim = ((2 * mu_p * mu_t + c1) * (2 * cov + c2)) / ((mu_p.square() + mu_t.square() + c1) * (var_p + var_t + c2))
    return ((1 - ssim) / 2).mean()


class DssimPatchLoss(nn.Module):
    """Structural dissimilarity of a patch: needs no downloaded network, so it always works offline."""

    name = "dssim"

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:  # [B, 3, H, W] in [0, 1] -> scalar
        return dssim(pred, target)


class LpipsPatchLoss(nn.Module):
    """LPIPS (AlexNet) of a patch, padded to `min_size` so AlexNet's strides keep a feature map (as ER-NeRF pads to 32)."""

    name = "lpips"

    def __init__(self, backbone_weights: str | Path, min_size: int = 32) -> None:
        super().__init__()
        from ernerf.metrics.perceptual import lpips_metric

        self.min_size = min_size
        self.metric = lpips_metric("alex", Path(backbone_weights))  # torchmetrics' LPIPS: frozen, differentiable

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:  # [B, 3, H, W] in [0, 1] -> scalar
        pad_h, pad_w = max(0, self.min_size - pred.shape[-2]), max(0, self.min_size - pred.shape[-1])
        pad = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
        pred, target = (F.pad(x, pad, mode="replicate") * 2 - 1 for x in (pred, target))
        # the metric's network itself: the metric's running sums would be state a CUDA-graphed step cannot keep
        return self.metric.net(pred, target).mean()


def lip_perceptual(lpips_backbone: str | None = None, fallback: bool = True) -> nn.Module:
    """LPIPS when `lpips_backbone` (torchvision alexnet-owt-7be5be79.pth) is a local file and torchvision imports; else D-SSIM."""
    why = lpips_unavailable(lpips_backbone)
    if why is None:
        log.info("lips perceptual loss: LPIPS (alex) with backbone %s", lpips_backbone)
        return LpipsPatchLoss(lpips_backbone)
    if not fallback:
        raise ErnerfError(f"LPIPS is unavailable: {why}. Give loss.perceptual.lpips_backbone=<alexnet-owt-7be5be79.pth>, "
                          "or use loss=lips_dssim (no downloaded weights).")
    log.warning("lips perceptual loss: D-SSIM, because LPIPS is unavailable (%s)", why)
    return DssimPatchLoss()


def lpips_unavailable(lpips_backbone: str | None) -> str | None:
    """Why LPIPS cannot be built here (None when it can)."""
    import importlib.util

    if not lpips_backbone:
        return "no backbone weights configured (loss.perceptual.lpips_backbone is null)"
    if not Path(lpips_backbone).is_file():
        return f"no file at {lpips_backbone}"
    if importlib.util.find_spec("torchvision") is None:
        return "torchvision is not installed (torchmetrics builds the LPIPS backbone with it)"
    return None


def torso_alpha_loss(alpha: Tensor, target: Tensor, valid: Tensor) -> Tensor:  # [N] x3 -> scalar
    """Squared error of torso alpha against the parsing's torso+neck mask, over pixels the head does not hide."""
    valid = valid.reshape(-1).float()
    return ((alpha.reshape(-1) - target.reshape(-1)).square() * valid).sum() / valid.sum().clamp_min(1)
