"""How a TalkingHeadSystem's computations run: the system says what is computed, an `Execution` runs it.

The system hands its computations over as functions (`step_outputs`, `render_frame`, its field) and holds one
Execution: `EagerExecution`, plain PyTorch, until an execution engine (`ernerf.engine.ExecutionEngine`, chosen by
conf/engine/ where a run is built or a checkpoint loaded) attaches itself with `TalkingHeadSystem.use_execution`.
Nothing here is part of the model: a checkpoint never records how it ran.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

FieldFn = Callable[..., Any]  # field.forward: (x [M, 3], d [M, 3], cond, extras=...) -> FieldOutputs
# (batch, sample capacity or None for exact compaction) -> {"loss": [], "occupied": [], ...}
StepFn = Callable[[dict[str, Any], int | None], dict[str, Tensor]]
# (inputs on the device, sample capacity or None, rays per chunk) -> per-pixel outputs + "occupied" []
RenderFn = Callable[[dict[str, Any], int | None, int], dict[str, Tensor]]


def to_device(tensor: Tensor, device: torch.device | str) -> Tensor:
    """A host tensor on `device` without waiting for the work queued there: a plain copy from pageable memory
    synchronises with the device's stream, which would make a frame's inputs wait for the frame rendering before it.
    So the tensor goes through page-locked memory and the copy is queued. On a CPU: the tensor as `.to` gives it."""
    device = torch.device(device)
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


@dataclass
class LaunchedRender:
    """A whole-frame render queued on its device and not waited for: the host may prepare the next frame meanwhile.

    `outputs` are device tensors that hold the frame once the device has reached them (read them after a copy
    queued behind them, or a synchronisation). A render replayed at a fixed sample capacity may have dropped samples:
    then `short` ([] bool on the device) is True and `redo()` renders the frame again, exactly, waiting for it.
    Renders that cannot fall short (eager ones, or any that was waited for) have `short` None."""

    outputs: dict[str, Tensor]
    short: Tensor | None = None
    redo: Callable[[], dict[str, Tensor]] | None = None

    def waited(self) -> dict[str, Tensor]:
        """The frame's outputs, exact: waits for the device where the render may have fallen short."""
        if self.short is not None and bool(self.short):
            return self.redo()
        return self.outputs


class Execution(Protocol):
    """What the system asks of whatever runs it."""

    @property
    def automatic_optimization(self) -> bool:
        """Whether Lightning steps the optimizer after `training_step` (False: `train_step` steps it)."""

    def field_forward(self, field: nn.Module, training: bool) -> FieldFn:
        """The function that evaluates `field` in training steps (`training`) or in whole-frame renders."""

    def train_step(self, step_fn: StepFn, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Run one training step's computation (`step_fn`) on `batch`; returns its outputs."""

    def render(self, render_fn: RenderFn, inputs: dict[str, Any], rays: int, device: torch.device) -> dict[str, Tensor]:
        """Run one whole-frame render of `rays` pixels on `device`; returns its outputs."""

    def launch(self, render_fn: RenderFn, inputs: dict[str, Any], rays: int, device: torch.device) -> LaunchedRender:
        """`render`, queued on the device without waiting for it where the execution can."""


class EagerExecution:
    """Plain PyTorch: the field as it is, each step and render as called, fp32 matrix products; whole frames in chunks
    of `eval_chunk` rays on a CPU and `eval_chunk_gpu` elsewhere (conf/engine/eager.yaml runs the same)."""

    automatic_optimization = True

    def __init__(self, eval_chunk: int = 4096, eval_chunk_gpu: int = 262144) -> None:
        self.eval_chunk, self.eval_chunk_gpu = int(eval_chunk), int(eval_chunk_gpu)

    def field_forward(self, field: nn.Module, training: bool) -> FieldFn:
        return field.forward

    def train_step(self, step_fn: StepFn, batch: dict[str, Any]) -> dict[str, Tensor]:
        return step_fn(batch, None)

    def render(self, render_fn: RenderFn, inputs: dict[str, Any], rays: int, device: torch.device) -> dict[str, Tensor]:
        return render_fn(inputs, None, self.render_chunk(device))

    def launch(self, render_fn: RenderFn, inputs: dict[str, Any], rays: int, device: torch.device) -> LaunchedRender:
        """An eager render is exact: nothing to check later (a GPU still runs its kernels after they are launched)."""
        return LaunchedRender(self.render(render_fn, inputs, rays, device))

    def render_chunk(self, device: torch.device) -> int:
        """Rays rendered at once: on a GPU a whole frame (each chunk costs a host sync), less on a CPU."""
        return self.eval_chunk if device.type == "cpu" else self.eval_chunk_gpu
