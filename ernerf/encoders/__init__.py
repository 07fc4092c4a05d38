"""ernerf.encoders: hash grids (torch / tcnn / triton backends), tri-plane, frequency and SH encoders."""

from ernerf.encoders.frequency import FrequencyEncoder, SphericalHarmonicsEncoder
from ernerf.encoders.hashgrid import HashGridEncoder, hashgrid_torch
from ernerf.encoders.triplane import GridEncoder3D, TriPlaneEncoder

__all__ = [
    "FrequencyEncoder",
    "GridEncoder3D",
    "HashGridEncoder",
    "SphericalHarmonicsEncoder",
    "TriPlaneEncoder",
    "hashgrid_torch",
]
