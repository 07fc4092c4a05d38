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


def test_input_norm_standardises_each_channel_with_the_training_statistics() -> None:
    torch.manual_seed(0)
    rows = torch.randn(50, 16, 80) * torch.linspace(0.5, 6.0, 80) - 10.0  # log-mel-like: far from zero, wide
    plain, normed = AudioNet(80), AudioNet(80, input_norm=True)
    normed.load_state_dict(plain.state_dict(), strict=False)
    normed.fit_input_norm(rows)
    standardised = (rows - rows.mean((0, 1))) / rows.std((0, 1))
    torch.testing.assert_close(normed(rows), plain(standardised), rtol=1e-4, atol=1e-4)
    assert normed(rows).std(0).mean() < plain(rows).std(0).mean()  # the raw offset no longer dominates the code


def test_input_norm_statistics_travel_in_the_state_dict_and_a_flat_channel_is_not_blown_up() -> None:
    rows = torch.randn(40, 16, 29)
    rows[..., 3] = -18.4  # a band at the silence floor in every row
    enc = AudioEncoder(29, input_norm=True)
    enc.fit_input_norm(rows)
    assert enc.net.input_scale[3] == pytest.approx(100.0)  # 1 / MIN_FEATURE_STD, not 1 / 0
    copy = AudioEncoder(29, input_norm=True)
    copy.load_state_dict(enc.state_dict())
    torch.testing.assert_close(copy.net.input_shift, enc.net.input_shift)
    assert "net.input_shift" not in AudioEncoder(29).state_dict()  # old checkpoints: no such buffers, none expected
    with pytest.raises(ErnerfError, match="input_norm=True"):
        AudioEncoder(29).fit_input_norm(rows)
