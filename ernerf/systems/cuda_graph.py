"""One training step's forward and backward replayed as a CUDA graph.

On a GPU the eager step is bound by the host: ~560 small kernels whose launches (Python, dispatcher, autograd)
take ~3x longer than the kernels run (bench/profile_step.py). A CUDA graph launches them all at once. Graphs
need fixed shapes, so the marcher keeps a fixed `capacity` of samples (padding the rest); the capacity follows
the occupancy grid: it is re-measured every `check_every` steps and the graph re-captured when the occupied
samples outgrow it (those steps drop the samples past the capacity) or shrink well below it.
The optimizer step stays outside the graph (fused AdamW is a handful of launches), so learning-rate schedules,
checkpoints and Lightning's step counting work unchanged.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

# (batch with tensors on the GPU, capacity) -> {"loss": scalar to back-propagate, "occupied": [] count, ...}
StepFn = Callable[[dict[str, Any], int], dict[str, Tensor]]


def round_up(value: float, multiple: int) -> int:
    """Smallest multiple of `multiple` >= value (at least one multiple)."""
    return max(multiple, math.ceil(value / multiple) * multiple)


class GraphedStep:
    """Captures `step_fn` (forward + backward) on the first batch, then replays it on every batch of the same layout."""

    def __init__(self, step_fn: StepFn, module: nn.Module, scalars: tuple[str, ...] = (), headroom: float = 1.2,
                 granularity: int = 16384, check_every: int = 50, warmup: int = 3) -> None:
        self.step_fn, self.module, self.scalars = step_fn, module, scalars  # scalars: numbers that change per step
        self.headroom, self.granularity, self.check_every, self.warmup = headroom, granularity, check_every, warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self.capacity = 0
        self.captures = 0
        self.inputs: dict[str, Any] = {}
        self.outputs: dict[str, Tensor] = {}
        self.peak: Tensor | None = None  # most occupied samples in one step since the last check
        self.replays_since_check = 0

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """Load `batch` into the graph's inputs and replay it; the returned tensors are overwritten next call."""
        if self.graph is None or self._capacity_changed():
            self.capture(batch)
        self._load(batch)
        self.graph.replay()
        self.replays_since_check += 1
        return self.outputs

    def capture(self, batch: Mapping[str, Any], capacity: int | None = None) -> None:
        """(Re-)capture at `capacity` samples (default: the batch's occupied samples plus headroom)."""
        self.graph = None  # frees the previous graph's memory pool before the new capture takes one
        device = batch["rays_o"].device
        self.inputs = {k: v.clone() if isinstance(v, Tensor) else v for k, v in batch.items()}
        for key in self.scalars:  # per-step numbers become device scalars the graph reads
            dtype = torch.long if isinstance(batch[key], int) else torch.float32
            self.inputs[key] = torch.tensor(batch[key], dtype=dtype, device=device)
        if capacity is None:
            with torch.no_grad():
                occupied = int(self.step_fn(self.inputs, None)["occupied"])  # exact compaction: the real count
            capacity = round_up(occupied * self.headroom, self.granularity)
        self.capacity = capacity
        params = [p for p in self.module.parameters() if p.requires_grad]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up on a side stream, as torch.cuda.graph's documentation asks
            for _ in range(self.warmup):
                self.step_fn(self.inputs, capacity)["loss"].backward()
        torch.cuda.current_stream().wait_stream(side)
        for p in params:  # the captured backward allocates the gradients; replays overwrite them in place
            p.grad = None
        self.graph = torch.cuda.CUDAGraph()
        self.peak = torch.zeros((), dtype=torch.long, device=device)
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            outputs = self.step_fn(self.inputs, capacity)
            outputs["loss"].backward()
            torch.maximum(self.peak, outputs["occupied"], out=self.peak)
        self.outputs = {k: v.detach() for k, v in outputs.items()}
        self.captures += 1
        self.replays_since_check = 0
        log.info("captured the training step as a CUDA graph at %d samples (capture %d)", capacity, self.captures)

    def _capacity_changed(self) -> bool:
        """Every `check_every` replays (one host sync): whether the occupied samples left the capacity's band."""
        if self.replays_since_check < self.check_every:
            return False
        peak = int(self.peak)
        self.peak.zero_()
        self.replays_since_check = 0
        wanted = round_up(peak * self.headroom, self.granularity)
        if peak > self.capacity or wanted < self.capacity / self.headroom:
            log.info("occupied samples peaked at %d for a capacity of %d: re-capturing", peak, self.capacity)
            return True
        return False

    def _load(self, batch: Mapping[str, Any]) -> None:
        """Copy the batch's tensors into the graph's inputs (asynchronously); other entries must not change."""
        for key, value in batch.items():
            target = self.inputs.get(key)
            if key in self.scalars:
                target.fill_(value)  # a kernel argument: no host-to-device copy, no sync
            elif isinstance(value, Tensor):
                if target is None or target.shape != value.shape:
                    raise ValueError(f"CUDA graph input '{key}' changed shape to {tuple(value.shape)}; "
                                     "a graphed step needs batches of one layout (random or torso rays, not patches)")
                target.copy_(value, non_blocking=True)
            elif value != target:
                raise ValueError(f"CUDA graph input '{key}' changed from {target!r} to {value!r}")
