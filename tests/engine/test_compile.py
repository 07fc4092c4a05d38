"""CompiledOrEager: the compiled function when it compiles, the eager one (with a warning) when it does not."""

from __future__ import annotations

import logging

import pytest
import torch

from ernerf.engine.compile import CompiledOrEager


def field(x: torch.Tensor, scale: float = 2.0) -> torch.Tensor:
    return torch.relu(x * scale).sum(-1)


def failing_backend(gm, example_inputs):
    raise RuntimeError("no compiler here")


def test_a_function_that_compiles_runs_compiled_in_both_grad_modes() -> None:
    torch._dynamo.reset()
    fn = CompiledOrEager(field, backend="eager")  # dynamo traces, no code generation: fast on any machine
    x = torch.randn(5, 3, requires_grad=True)
    torch.testing.assert_close(fn(x, scale=3.0), field(x, scale=3.0))
    with torch.no_grad():
        torch.testing.assert_close(fn(x), field(x))
    assert fn.active and fn.compiled_modes == {True, False}


def test_a_function_that_fails_to_compile_runs_eagerly_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    torch._dynamo.reset()
    fn = CompiledOrEager(field, backend=failing_backend)
    x = torch.randn(5, 3, requires_grad=True)
    with caplog.at_level(logging.WARNING, logger="ernerf.engine.compile"):
        out = fn(x)
    torch.testing.assert_close(out, field(x))
    out.sum().backward()  # the eager result keeps its graph
    assert x.grad is not None
    assert not fn.active
    assert "torch.compile of field failed" in caplog.text and "engine.compile_field=false" in caplog.text
    torch.testing.assert_close(fn(x), field(x))  # later calls never try again


def test_compile_field_modes_are_checked_and_auto_compiles_nothing_outside_a_gpu_fit() -> None:
    from ernerf.engine import ExecutionEngine
    from ernerf.errors import ErnerfError
    from tests.systems.test_talking_head import build

    with pytest.raises(ErnerfError, match="compile_field must be true, false or auto"):
        ExecutionEngine(compile_field="yes")
    system = build()
    engine = ExecutionEngine().attach(system)  # auto: compiled only when a fit starts on a GPU
    assert engine.field_forward(system.field, True) == engine.field_forward(system.field, False) == system.field.forward
    compiled = ExecutionEngine(compile_field=True, cuda_graph=False).attach(system)  # true: renders too
    assert isinstance(compiled.field_forward(system.field, False), CompiledOrEager)
    assert compiled.field_forward(system.field, True) is compiled.field_forward(system.field, False)
