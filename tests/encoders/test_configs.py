"""conf/encoder/*.yaml compose and instantiate the encoders they name."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from tests.conftest import CONF_DIR


def _encoder_cfg(name: str, *overrides: str):
    """Compose conf/encoder/<name>.yaml as the `encoder` group."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=None, overrides=[f"+encoder={name}", *overrides]).encoder


@pytest.mark.parametrize(("name", "dim"), [("triplane", 36), ("grid3d", 32)])
def test_torch_configs_instantiate(name: str, dim: int) -> None:
    assert instantiate(_encoder_cfg(name)).output_dim == dim


def test_fast_backends_inherit_the_triplane_sizes() -> None:
    for name, backend in (("triplane_tcnn", "tcnn"), ("triplane_triton", "triton")):
        cfg = _encoder_cfg(name, "encoder.log2_hashmap_size=16")
        assert cfg.backend == backend and cfg.num_levels == 12 and cfg.log2_hashmap_size == 16


def test_hashmap_size_is_overridable() -> None:
    enc = instantiate(_encoder_cfg("triplane", "encoder.log2_hashmap_size=12"))
    assert enc.xy.embeddings.shape[0] == 64**2 + 11 * 2**12
