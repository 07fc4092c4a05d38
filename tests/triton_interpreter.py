"""A skip marker for tests of Triton kernels that run on the CPU under Triton's interpreter.

The interpreter must be chosen (TRITON_INTERPRET=1) before triton is first imported in the process: the kernels
bind to it when decorated. Such tests therefore run only in a process started with it, e.g.
    TRITON_INTERPRET=1 python -m pytest tests/encoders/test_triton_hashgrid.py
which tests/test_triton_interpreter.py does for every such module in the default suite.
"""

from __future__ import annotations

import os

import pytest
import torch


def interpreter_only(kernel: object) -> pytest.MarkDecorator:
    """Skip unless `kernel` (a @triton.jit function) was built for the CPU interpreter (and no GPU is there)."""
    from triton.runtime.interpreter import InterpretedFunction

    interpreted = isinstance(kernel, InterpretedFunction)
    return pytest.mark.skipif(
        torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") != "1" or not interpreted,
        reason="CPU test of a Triton kernel: run its module alone with TRITON_INTERPRET=1 "
               "(tests/test_triton_interpreter.py does)",
    )
