"""Lips patch losses and the torso alpha term: analytic cases and the LPIPS -> D-SSIM fallback."""

from __future__ import annotations

import pytest
import torch

from ernerf.errors import ErnerfError
from ernerf.losses import DssimPatchLoss, dssim, lip_perceptual, torso_alpha_loss


def test_dssim_is_zero_for_equal_patches_and_grows_with_structural_change() -> None:
    torch.manual_seed(0)
    patch = torch.rand(1, 3, 12, 12)
    assert dssim(patch, patch).item() == pytest.approx(0.0, abs=1e-6)
    blurred = torch.nn.functional.avg_pool2d(patch, 3, stride=1, padding=1)
    noise = (patch + 0.3 * torch.randn_like(patch)).clamp(0, 1)
    assert 0 < dssim(blurred, patch) and dssim(blurred, patch) < dssim(1 - patch, patch)
    assert dssim(noise, patch) > 0.05
    assert dssim(torch.rand(1, 3, 2, 3), torch.rand(1, 3, 2, 3)).isfinite()  # patches smaller than the window


def test_dssim_gradient_moves_a_patch_towards_its_target() -> None:
    torch.manual_seed(0)
    target = torch.rand(1, 3, 8, 8)
    pred = torch.full_like(target, 0.5, requires_grad=True)
    opt = torch.optim.Adam([pred], lr=0.05)
    start = dssim(pred, target).item()
    for _ in range(50):
        loss = dssim(pred, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < start / 3


def test_lpips_without_local_weights_falls_back_to_dssim_or_says_why(tmp_path) -> None:
    assert isinstance(lip_perceptual(None), DssimPatchLoss)
    assert isinstance(lip_perceptual(str(tmp_path / "missing.pth")), DssimPatchLoss)
    with pytest.raises(ErnerfError, match="lips_dssim"):
        lip_perceptual(str(tmp_path / "missing.pth"), fallback=False)


def test_torso_alpha_loss_ignores_pixels_the_head_hides() -> None:
    alpha = torch.tensor([1.0, 0.0, 0.3, 0.9])
    target = torch.tensor([1.0, 0.0, 1.0, 0.0])
    visible = torch.tensor([True, True, False, False])
    assert torso_alpha_loss(alpha, target, visible).item() == 0.0
    assert torso_alpha_loss(alpha, target, torch.ones(4, dtype=torch.bool)).item() == pytest.approx((0.49 + 0.81) / 4)
