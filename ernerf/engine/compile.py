"""torch.compile with a way out: a function that fails to compile runs eagerly instead (with a warning)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger(__name__)


class CompiledOrEager:
    """`torch.compile(fn, dynamic=True)`, falling back to `fn` for good if compiling it fails.

    Compilation happens on the first call with gradients and the first without (two graphs); an error there (no
    working Triton, an op the compiler cannot trace) is logged and the eager function used from then on, so
    training goes on at eager speed rather than stopping. Dynamic shapes: every step keeps a different number of
    samples, and each CUDA-graph capture has its own sample capacity.
    """

    def __init__(self, fn: Callable[..., Any], **options: Any) -> None:
        self.fn = fn
        self.compiled: Callable[..., Any] | None = torch.compile(fn, **({"dynamic": True} | options))
        self.compiled_modes: set[bool] = set()  # grad modes whose graph compiled

    @property
    def active(self) -> bool:
        """Whether calls still go through the compiled function."""
        return self.compiled is not None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.compiled is None:
            return self.fn(*args, **kwargs)
        mode = torch.is_grad_enabled()
        if mode in self.compiled_modes:
            return self.compiled(*args, **kwargs)
        try:
            out = self.compiled(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any compiler failure: fall back, say why
            log.warning("torch.compile of %s failed, running it eagerly (engine.compile_field=false silences "
                        "this): %s: %s", getattr(self.fn, "__qualname__", self.fn), type(exc).__name__,
                        str(exc).splitlines()[0] if str(exc) else "")
            self.compiled = None
            return self.fn(*args, **kwargs)
        self.compiled_modes.add(mode)
        return out
