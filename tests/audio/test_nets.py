"""AudioNet / AudioAttNet / AudioEncoder shapes and analytic behaviour."""

from __future__ import annotations

import pytest
import torch

from ernerf.audio.nets import AudioAttNet, AudioEncoder, AudioNet
from ernerf.errors import ErnerfError


def test_audionet_maps_a_window_to_a_code_and_uses_the_centre_steps() -> None:
    torch.manual_seed(0)
    net = AudioNet(feature_dim=80, out_dim=32)
    x = torch.randn(5, 16, 80)
    assert net(x).shape == (5, 32)
    padded = torch.cat([torch.randn(5, 4, 80), x, torch.randn(5, 4, 80)], dim=1)  # 24 steps, 16 in the centre
    torch.testing.assert_close(net(padded), net(x))


def test_attention_of_identical_codes_returns_that_code() -> None:
    torch.manual_seed(0)
    att = AudioAttNet(dim=32, seq_len=8)
    code = torch.randn(2, 1, 32)
    torch.testing.assert_close(att(code.expand(2, 8, 32)), code[:, 0])


def test_attention_output_is_a_convex_combination() -> None:
    torch.manual_seed(0)
    codes = torch.randn(4, 8, 32)
    out = AudioAttNet()(codes)
    assert out.shape == (4, 32)
    assert torch.all(out <= codes.max(1).values + 1e-6) and torch.all(out >= codes.min(1).values - 1e-6)


def test_encoder_shapes_gradients_and_unsmoothed_mode() -> None:
    torch.manual_seed(0)
    enc = AudioEncoder(feature_dim=29, out_dim=32)
    windows = torch.randn(3, 8, 16, 29)
    out = enc(windows)
    assert out.shape == (3, 32) and enc.output_dim == 32
    out.square().sum().backward()
    assert enc.net.conv[0].weight.grad.abs().sum() > 0 and enc.att.attention.weight.grad.abs().sum() > 0
    torch.testing.assert_close(enc(windows, smooth=False), enc.net(windows[:, 4]))


def test_wrong_feature_width_names_the_fix() -> None:
    with pytest.raises(ErnerfError, match="audio_features"):
        AudioEncoder(feature_dim=80)(torch.zeros(1, 8, 16, 1024))
