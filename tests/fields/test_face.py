"""FaceField: output ranges, region attention gating, conditioning codes, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from ernerf.encoders import TriPlaneEncoder
from ernerf.errors import ErnerfError
from ernerf.fields import FaceCondition, FaceField, trunc_exp


def _field(**kwargs) -> FaceField:
    torch.manual_seed(0)
    enc = TriPlaneEncoder(num_levels=4, base_resolution=8, desired_resolution=32, log2_hashmap_size=10)
    with torch.no_grad():  # non-trivial features so attention varies over space
        for plane in (enc.xy, enc.yz, enc.xz):
            plane.embeddings.normal_()
    return FaceField(enc, num_frames=10, **kwargs)


def _points(m: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    return torch.rand(m, 3) * 2 - 1, torch.randn(m, 3)


def test_outputs_have_valid_ranges_and_shapes() -> None:
    field = _field()
    x, d = _points()
    out = field(x, d, FaceCondition(audio=torch.randn(32) * 5, eye=torch.tensor([0.5]), frame_index=torch.tensor([3])))
    assert out.sigma.shape == (64,) and out.rgb.shape == (64, 3)
    assert (out.sigma >= 0).all() and (out.rgb >= 0).all() and (out.rgb <= 1).all()
    assert {k: v.shape for k, v in out.extras.items()} == {
        "audio_att": (64, 1),
        "eye_att": (64, 1),
        "uncertainty": (64, 1),
    }
    assert (out.extras["uncertainty"] >= 0).all() and (out.extras["eye_att"] <= 1).all()


def test_density_changes_with_audio_and_matches_forward() -> None:
    field = _field()
    x, d = _points()
    a, b = FaceCondition(audio=torch.randn(32)), FaceCondition(audio=torch.randn(32))
    assert not torch.allclose(field.density(x, a), field.density(x, b))
    torch.testing.assert_close(field.density(x, a), field(x, d, a).sigma)


def test_attention_depends_on_position_and_zero_attention_mutes_audio() -> None:
    field = _field()
    x, d = _points()
    cond = FaceCondition(audio=torch.randn(32))
    att = field(x, d, cond).extras["audio_att"]
    assert att.std() > 0  # a per-region gate, not a constant
    with torch.no_grad():
        field.audio_att_net[-1].weight.zero_()  # gate closed everywhere
    silent = field.density(x, FaceCondition(audio=torch.zeros(32)))
    torch.testing.assert_close(field.density(x, cond), silent)


def test_individual_codes_and_eye_default() -> None:
    field = _field()
    x, d = _points()
    audio = torch.randn(32)
    rgb = [field(x, d, FaceCondition(audio=audio, frame_index=torch.tensor([i]))).rgb for i in (0, 1)]
    assert not torch.allclose(rgb[0], rgb[1])
    with torch.no_grad():
        field.individual_codes.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0]]).repeat(10, 1))
    torch.testing.assert_close(  # all codes equal: the mean code is that code
        field(x, d, FaceCondition(audio=audio)).rgb, field(x, d, FaceCondition(audio=audio, frame_index=torch.tensor([7]))).rgb
    )
    open_eyes = FaceCondition(audio=audio, eye=torch.zeros(1))
    torch.testing.assert_close(field.density(x, FaceCondition(audio=audio)), field.density(x, open_eyes))
    with pytest.raises(ErnerfError, match="audio_dim"):
        field.density(x, FaceCondition(audio=torch.zeros(64)))


def test_gradients_reach_encoder_codes_and_audio() -> None:
    field = _field(eye_dim=0, inference_code="zero")
    x, d = _points()
    audio = torch.randn(32, requires_grad=True)
    out = field(x, d, FaceCondition(audio=audio, frame_index=torch.tensor([2])))
    assert "eye_att" not in out.extras
    (out.sigma.sum() + out.rgb.sum() + out.extras["uncertainty"].sum()).backward()
    assert field.encoder.xy.embeddings.grad.abs().sum() > 0 and audio.grad.abs().sum() > 0
    assert field.individual_codes.grad[2].abs().sum() > 0 and field.individual_codes.grad[3].abs().sum() == 0


def test_trunc_exp_clamps_the_gradient_only() -> None:
    x = torch.tensor([1.0, 20.0], requires_grad=True)
    y = trunc_exp(x)
    y.sum().backward()
    torch.testing.assert_close(y.detach(), torch.exp(torch.tensor([1.0, 20.0])))
    torch.testing.assert_close(x.grad, torch.tensor([math.e, math.exp(15.0)]))
