"""Loss functions against hand-computed values, and the composer's weighting."""

from __future__ import annotations

import math

import pytest
import torch

from ernerf.errors import ErnerfError
from ernerf.losses import (
    LossComposer,
    attention_outside_mask,
    eye_audio_overlap,
    l1,
    opacity_entropy,
    photometric_mse,
    uncertainty_weighted_mse,
)


def test_mse_and_l1_with_and_without_mask() -> None:
    pred = torch.zeros(4, 3)
    target = torch.tensor([0.5, 0.5, 0.5, 1.0])[:, None].expand(4, 3)
    assert photometric_mse(pred, target).item() == pytest.approx((3 * 0.25 + 1) / 4)
    mask = torch.tensor([True, True, False, False])
    assert photometric_mse(pred, target, mask).item() == pytest.approx(0.25)
    assert l1(pred, target).item() == pytest.approx(2.5 / 4)
    assert l1(pred, target, ~mask).item() == pytest.approx(0.75)


def test_uncertainty_loss_is_plain_mse_at_the_start() -> None:
    pred, target = torch.rand(8, 3), torch.rand(8, 3)
    loss = uncertainty_weighted_mse(pred, target, torch.rand(8), step_factor=torch.tensor(0.0))
    torch.testing.assert_close(loss, photometric_mse(pred, target))


def test_sample_weights_scale_each_rays_colour_error() -> None:
    """A sampler's loss weights (error-guided draws, reweighted) multiply each ray's colour term, nothing else."""
    pred, target = torch.zeros(2, 3), torch.tensor([[0.3, 0.3, 0.3], [0.6, 0.6, 0.6]])
    weight = torch.tensor([2.0, 0.5])
    assert photometric_mse(pred, target, sample_weight=weight).item() == pytest.approx((2 * 0.09 + 0.5 * 0.36) / 2)
    start = torch.tensor(0.0)
    weighted = uncertainty_weighted_mse(pred, target, torch.rand(2), start, sample_weight=weight)
    torch.testing.assert_close(weighted, photometric_mse(pred, target, sample_weight=weight))


def test_uncertainty_loss_with_zero_uncertainty_adds_half_the_residual() -> None:
    pred, target = torch.zeros(2, 3), torch.tensor([[0.3, 0.4, 0.0], [0.0, 0.0, 0.0]])
    loss = uncertainty_weighted_mse(pred, target, torch.zeros(2), step_factor=torch.tensor(1.0))
    mse = (0.09 + 0.16) / 3 / 2
    assert loss.item() == pytest.approx(mse + 0.5 * 0.5 / 2)  # residual |(0.3, 0.4)| = 0.5 on ray 0


def test_uncertain_rays_weigh_more_and_uncertainty_follows_the_error() -> None:
    pred = torch.zeros(3, 3, requires_grad=True)
    target = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    u = torch.tensor([2.0, 0.0, 0.5], requires_grad=True)
    face = torch.tensor([True, True, False])
    uncertainty_weighted_mse(pred, target, u, step_factor=torch.tensor(1.0), face_mask=face).backward()
    assert pred.grad[0].abs().sum() > pred.grad[1].abs().sum()  # same error, more uncertain ray weighs more
    assert u.grad[1] < 0  # large residual, u = 0: raise the uncertainty
    assert u.grad[2] > 0  # outside the face: pushed towards zero


def test_attention_regularisers() -> None:
    att = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    face = torch.tensor([True, False, True, False])
    assert attention_outside_mask(att, face).item() == pytest.approx((2 + 4) / 4)
    eye = torch.tensor([0.5, 0.5, 0.0, 1.0])
    assert eye_audio_overlap(eye, att, face).item() == pytest.approx(0.5 * 1.0 / 4)


def test_opacity_entropy_is_one_bit_at_half_and_zero_when_decided() -> None:
    assert opacity_entropy(torch.full((5,), 0.5)).item() == pytest.approx(1.0)
    assert opacity_entropy(torch.tensor([0.0, 1.0])).item() < 1e-3


def host_step(step: float) -> torch.Tensor:
    """A training step as an eager step passes it: a 0-dim float64 on the host."""
    return torch.tensor(float(step), dtype=torch.float64)


def test_composer_weights_ramps_and_logs() -> None:
    composer = LossComposer({"mse": 1.0, "lpips": 0.1, "entropy": 0.0}, ramps={"lpips": 100})
    x = torch.tensor(2.0, requires_grad=True)
    terms = {"mse": x * 3, "lpips": torch.tensor(4.0)}
    total, logs = composer(terms, step=host_step(50))
    assert total.item() == pytest.approx(6.0 + 0.05 * 4.0)
    assert composer(terms)[0].item() == pytest.approx(6.4)  # no step: full weights
    assert logs["lpips"].item() == 4.0 and not logs["mse"].requires_grad
    total.backward()
    assert x.grad.item() == 3.0
    assert composer.active("lpips") and not composer.active("entropy") and not composer.active("missing")
    assert float(composer.weight("lpips", host_step(1000))) == pytest.approx(0.1)
    assert math.isclose(composer.weight("mse", host_step(0)), 1.0)


def test_composer_rejects_unweighted_terms() -> None:
    with pytest.raises(ErnerfError, match="no weight"):
        LossComposer({"mse": 1.0})({"mse": torch.tensor(1.0), "lips": torch.tensor(2.0)})
    with pytest.raises(ErnerfError, match="without a weight"):
        LossComposer({"mse": 1.0}, ramps={"lips": 10})


def test_a_host_step_weighs_terms_exactly_as_the_number_it_stands_for() -> None:
    """Eager steps pass the step as a float64 on the host: the total keeps the terms' dtype and equals, bit for bit,
    the sum weighted with Python numbers."""
    composer = LossComposer({"rgb": 1.0, "rgb_uncertainty": 2.0}, ramps={"rgb_uncertainty": 300})
    terms = {"rgb": torch.tensor(0.3), "rgb_uncertainty": torch.tensor(0.7)}
    for step in (0, 7, 123, 300, 400):
        total, _ = composer(terms, host_step(step))
        numbers = 1.0 * terms["rgb"] + 2.0 * min(step / 300, 1.0) * terms["rgb_uncertainty"]
        assert total.dtype == torch.float32 and torch.equal(total, numbers), step


def test_ramped_weights_take_a_device_step_as_a_cuda_graph_feeds_them() -> None:
    composer = LossComposer({"rgb": 1.0, "rgb_uncertainty": 2.0}, ramps={"rgb_uncertainty": 100})
    terms = {"rgb": torch.tensor(0.5), "rgb_uncertainty": torch.tensor(0.25)}
    for step in (0, 30, 100, 400):
        host, _ = composer(terms, host_step(step))
        graphed, _ = composer(terms, torch.tensor(step))  # the graph's step: a long scalar
        torch.testing.assert_close(graphed, host)
    assert float(composer.weight("rgb_uncertainty", torch.tensor(50))) == pytest.approx(1.0)
