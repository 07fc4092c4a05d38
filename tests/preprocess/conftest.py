"""Fixtures of the preprocessing tests that damage or redo a real subject (modules with a `subject` of their own
use theirs)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ernerf.io.layout import SubjectLayout


@pytest.fixture
def subject(tmp_path: Path, prepare_subject) -> SubjectLayout:
    """A copy of a real subject made from the Trump clip, preprocessed up to the landmarks step (or further)."""
    layout = SubjectLayout(tmp_path / "data" / "s")
    shutil.copytree(prepare_subject("train/trump_10s.mp4", upto="landmarks"), layout.root, symlinks=True)
    return layout
