"""Pipeline wiring: steps built from the real config, user errors surfacing as one-line ErnerfErrors."""

from __future__ import annotations

import pytest

from ernerf.errors import ErnerfError
from ernerf.preprocess.pipeline import build_steps
from tests.conftest import compose


def test_build_steps_follows_the_config_order() -> None:
    cfg = compose("preprocess", ["subject=test"])
    names = [step.name for step in build_steps(cfg.preprocess.steps)]
    assert names == list(cfg.preprocess.steps.keys()) and names[0] == "ingest" and names[-1] == "report"


def test_constructor_error_is_the_users_error_not_hydras() -> None:
    cfg = compose("preprocess", ["subject=test", "preprocess.steps.parsing.backend=bisenet",
                                 "preprocess.steps.parsing.bisenet_weights=/nonexistent/79999_iter.pth"])
    with pytest.raises(ErnerfError, match="preprocess.steps.parsing.bisenet_weights") as info:
        build_steps(cfg.preprocess.steps)
    assert type(info.value) is ErnerfError and "Error in call to target" not in str(info.value)


def test_other_constructor_errors_keep_hydras_context() -> None:
    cfg = compose("preprocess", ["subject=test", "+preprocess.steps.blink.no_such_argument=1"])
    with pytest.raises(Exception, match="no_such_argument") as info:
        build_steps(cfg.preprocess.steps)
    assert not isinstance(info.value, ErnerfError)
