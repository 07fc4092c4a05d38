"""Fixtures: one mini subject of real frames per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import shared_clip
from tests.postprocess.mini_subject import write_mini_subject


@pytest.fixture(scope="session")
def mini_subject(tmp_path_factory: pytest.TempPathFactory):
    """Layout of a 12-frame subject cut from train/trump_10s.mp4 (see mini_subject.py)."""
    root = Path(tmp_path_factory.mktemp("data")) / "mini"
    return write_mini_subject(root, shared_clip("train/trump_10s.mp4"))
