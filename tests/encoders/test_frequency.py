"""Frequency and spherical-harmonics encoders against closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from ernerf.encoders import FrequencyEncoder, SphericalHarmonicsEncoder
from ernerf.errors import ErnerfError


def test_frequency_encoding_values() -> None:
    enc = FrequencyEncoder(input_dim=2, num_freqs=3)
    x = torch.tensor([[math.pi / 2, 0.0]])
    out = enc(x)
    assert out.shape == (1, 2 * 7) and enc.output_dim == 14
    expected = [math.pi / 2, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, -1.0, 1.0, 1.0, 1.0]
    torch.testing.assert_close(out[0], torch.tensor(expected), atol=1e-6, rtol=0)
    assert FrequencyEncoder(3, 4, include_input=False).output_dim == 24


def _fibonacci_sphere(n: int) -> torch.Tensor:
    """n nearly uniform unit vectors."""
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / n
    phi = math.pi * (1 + 5**0.5) * i
    r = (1 - z**2).sqrt()
    return torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], -1)


def test_spherical_harmonics_are_orthonormal_on_the_sphere() -> None:
    d = _fibonacci_sphere(20000)
    y = SphericalHarmonicsEncoder(degree=4)(d)  # [n, 16]
    gram = y.T @ y * (4 * math.pi / len(d))
    torch.testing.assert_close(gram, torch.eye(16, dtype=torch.float64), atol=2e-3, rtol=0)


def test_spherical_harmonics_ignore_direction_length() -> None:
    enc = SphericalHarmonicsEncoder(degree=3)
    d = torch.tensor([[0.3, -0.4, 0.5]])
    torch.testing.assert_close(enc(d), enc(7 * d))
    assert enc(d).shape == (1, 9)
    with pytest.raises(ErnerfError):
        SphericalHarmonicsEncoder(degree=5)
