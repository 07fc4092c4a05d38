"""Where the project's Triton kernels may run: CUDA tensors, or any tensors under Triton's interpreter (tests)."""

from __future__ import annotations

import os

from torch import Tensor

from ernerf.errors import ErnerfError


def require_kernel_device(x: Tensor, kernel: str, cpu_alternative: str) -> None:
    """Raise a clear error unless `kernel` can run on `x`'s device: CUDA, or anywhere with TRITON_INTERPRET=1."""
    if x.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ErnerfError(f"the Triton {kernel} needs CUDA tensors, got {x.device.type} ones; on a CPU "
                          f"{cpu_alternative} (tests can run it under Triton's interpreter: TRITON_INTERPRET=1)")
