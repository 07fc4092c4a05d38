"""The training step replayed as CUDA graphs: one for data + forward + backward, one for the optimizer.

On a GPU the eager step is bound by the host: hundreds of small kernels whose launches (Python, dispatcher,
autograd) take longer than the kernels run (bench/profile_step.py, docs/performance.md). A CUDA graph launches them
all at once. Graphs
need fixed shapes, so the marcher keeps a fixed `capacity` of samples (padding the rest); the capacity follows
the occupancy grid: it is re-measured every `check_every` steps and the graph re-captured when the occupied
samples outgrow it (those steps drop the samples past the capacity) or shrink well below it.

Where the data module can build a batch on the GPU from a frame index (`build`), the graph draws the rays
itself and its only inputs are the frame index and two device scalars (step, progress): nothing is copied from
the host per step.
Gradients live in one flat buffer, so several processes (DDP) reduce them with one all-reduce between the two
graphs. The optimizer step is a second graph (`capturable` optimizer, learning rates as device tensors that the
scheduler fills), installed as the optimizer's `step`: Lightning still calls it, and so still counts steps.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ernerf.systems.execution import LaunchedRender

log = logging.getLogger(__name__)

# (batch with tensors on the GPU, capacity) -> {"loss": scalar to back-propagate, "occupied": [] count, ...}
StepFn = Callable[[dict[str, Any], int | None], dict[str, Tensor]]
BuildFn = Callable[[Tensor, int], dict[str, Any]]  # (frame index [1] long on the GPU, layout) -> ray batch
ReduceFn = Callable[[Tensor], None]  # flat gradients [P], reduced in place across processes


MAX_LAYOUTS = 4  # batch shapes a graphed step keeps a graph for (the lips stage has two)


def round_up(value: float, multiple: int) -> int:
    """Smallest multiple of `multiple` >= value (at least one multiple)."""
    return max(multiple, math.ceil(value / multiple) * multiple)


def make_capturable(optimizer: torch.optim.Optimizer) -> None:
    """Let `optimizer.step()` be captured: step counts on the device, learning rates as device tensors (a
    scheduler fills them in place, so replays see the schedule)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    device = params[0].device
    for group in optimizer.param_groups:
        if "capturable" not in group:
            raise ValueError(f"{type(optimizer).__name__} cannot be captured in a CUDA graph (no `capturable` option): "
                             "use Adam or AdamW, or engine.cuda_graph=false.")
        group["capturable"] = True
        if not isinstance(group["lr"], Tensor):
            group["lr"] = torch.tensor(float(group["lr"]), device=device)
    for state in optimizer.state.values():
        if "step" in state:
            state["step"] = state["step"].to(device=device, dtype=torch.float32)


def warm_and_capture(fn: Callable[[], Any], warmup: int = 1,
                     before_capture: Callable[[], None] | None = None) -> tuple[torch.cuda.CUDAGraph, Any]:
    """Run `fn` `warmup` times on a side stream (as torch.cuda.graph's documentation asks), then capture it once.

    Returns the graph and what the captured call returned (tensors the replays overwrite)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    if before_capture is not None:
        before_capture()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        outputs = fn()
    return graph, outputs


@dataclass
class StepCapture:
    """One layout's captured step: its graph, the inputs it reads, the outputs it writes, its sample capacity, the
    most samples a replay kept since the last check (on the device) and the replays since then."""

    graph: torch.cuda.CUDAGraph | None
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    capacity: int
    peak: Tensor
    replays_since_check: int = 0


class GraphedStep:
    """Captures `step_fn` (forward + backward) on the first batch of each layout, then replays that layout's graph.

    A layout is one shape of batch: the lips stage alternates lips patches and random rays, so it has two graphs
    (sharing the gradient buffer and the optimizer's graph). Without `build` the layout is read off the batch's
    shapes and host values; with `build` the batch names it (`layout`: the sampler's turn).

    scalars: batch entries that change every step ([] host tensors or numbers) -> the dtype of the device scalar the
        graph reads them from (filled in place: no host-to-device copy).
    build: when given, the batch holds only the frame index, its `layout` and the scalars, and
        `build(frame_index, layout)` makes the rays inside the graph.
    reduce: called on the flat gradients after each replay (DDP's all-reduce); None on one process.
    fixed_capacity: samples to capture at, kept for the whole run (steady memory and step time, e.g. to compare
        runs); the periodic check then only warns when steps drop samples. None: follow the occupied samples.
    """

    def __init__(self, step_fn: StepFn, module: nn.Module, scalars: Mapping[str, torch.dtype] | None = None,
                 headroom: float = 1.2, granularity: int = 16384, check_every: int = 50, warmup: int = 3,
                 build: BuildFn | None = None, reduce: ReduceFn | None = None, fixed_capacity: int | None = None) -> None:
        self.step_fn, self.module, self.build, self.reduce = step_fn, module, build, reduce
        self.scalars = dict(scalars or {})
        self.fixed_capacity = fixed_capacity
        self.headroom, self.granularity, self.check_every, self.warmup = headroom, granularity, check_every, warmup
        self.layouts: dict[Any, StepCapture] = {}
        self.current: StepCapture | None = None  # the layout replayed last
        self.captures = 0
        self.flat_grads: Tensor | None = None  # [P] every trained parameter's .grad is a view into it
        self.grad_params: list[nn.Parameter] = []  # those parameters, in the buffer's order
        self.optimizer: torch.optim.Optimizer | None = None
        self.optimizer_graph: torch.cuda.CUDAGraph | None = None

    @property
    def capacity(self) -> int:
        """The sample capacity of the layout replayed last."""
        return self.current.capacity if self.current else 0

    @property
    def outputs(self) -> dict[str, Tensor]:
        return self.current.outputs if self.current else {}

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """Load `batch` into its layout's graph and replay it; the returned tensors are overwritten by its next
        replay."""
        key = self._key_of(batch)
        entry = self.layouts.get(key)
        if entry is None and len(self.layouts) >= MAX_LAYOUTS:
            raise ValueError(f"a graphed training step met more than {MAX_LAYOUTS} batch shapes (patches of varying "
                             "size?): give the sampler a fixed size, or engine.cuda_graph=false")
        if entry is None or self._capacity_changed(entry):
            entry = self.layouts[key] = self.capture(batch, self.fixed_capacity)
        self.current = entry
        self._load(entry, batch)
        entry.graph.replay()
        if self.reduce is not None:
            self.reduce(self.flat_grads)
        entry.replays_since_check += 1
        return entry.outputs

    # ---------------------------------------------------------------- forward + backward
    def capture(self, batch: Mapping[str, Any], capacity: int | None = None) -> StepCapture:
        """(Re-)capture `batch`'s layout at `capacity` samples (default: the batch's occupied samples plus headroom)."""
        old = self.layouts.pop(self._key_of(batch), None)
        if old is not None:
            old.graph = None  # frees the previous graph's memory pool before the new capture takes one
        device = self.module.device if hasattr(self.module, "device") else batch["rays_o"].device
        inputs = {k: v.clone() if isinstance(v, Tensor) else v for k, v in batch.items()}
        for key, dtype in self.scalars.items():  # per-step numbers become device scalars the graph reads
            inputs[key] = torch.tensor(float(batch[key]), dtype=dtype, device=device)
        if capacity is None:
            with torch.no_grad():
                occupied = int(self._forward(inputs, None)["occupied"])  # exact compaction: the real count
            capacity = round_up(occupied * self.headroom, self.granularity)
        peak = torch.zeros((), dtype=torch.long, device=device)

        def step() -> dict[str, Tensor]:
            outputs = self._forward_backward(inputs, capacity)
            torch.maximum(peak, outputs["occupied"], out=peak)
            return outputs

        def before_capture() -> None:
            self.bind_gradients()
            peak.zero_()  # the warm-up's counts are dropped: the peak starts with the captured graph's replays

        graph, outputs = warm_and_capture(step, self.warmup, before_capture)
        self.captures += 1
        log.info("captured the training step as a CUDA graph at %d samples (capture %d)", capacity, self.captures)
        return StepCapture(graph, inputs, {k: v.detach() if isinstance(v, Tensor) else v for k, v in outputs.items()},
                           capacity, peak)

    def _key_of(self, batch: Mapping[str, Any]) -> Any:
        """The batch's layout: the sampler's turn it names when the graph builds it, else its shapes and host values."""
        if self.build is not None:
            return batch.get("layout", 0)
        return tuple((k, tuple(v.shape)) if isinstance(v, Tensor) else (k, v)
                     for k, v in sorted(batch.items()) if k not in self.scalars)

    def _forward(self, inputs: dict[str, Any], capacity: int | None) -> dict[str, Tensor]:
        batch = inputs
        if self.build is not None:
            batch = {**self.build(inputs["frame_index"], inputs.get("layout", 0)),
                     **{k: inputs[k] for k in self.scalars}}
        return self.step_fn(batch, capacity)

    def _forward_backward(self, inputs: dict[str, Any], capacity: int) -> dict[str, Tensor]:
        if self.flat_grads is not None:
            self.flat_grads.zero_()  # backward adds into the views
        outputs = self._forward(inputs, capacity)
        outputs["loss"].backward()
        return outputs

    def bind_gradients(self) -> None:
        """Make the gradient of every parameter the step trains a view into one buffer, before each capture.

        The buffer and its parameters (those the first warm-up gave a gradient) are fixed at the first capture: the
        optimizer's graph reads these addresses. The views are made again at every capture because `.grad` may have
        been dropped since (Lightning's `zero_grad(set_to_none=True)` before each validation): a backward captured
        then would accumulate into fresh tensors that nothing reads, and the optimizer's graph would apply zero
        gradients (weight decay alone) from that capture on."""
        if self.flat_grads is None:
            self.grad_params = [p for p in self.module.parameters() if p.requires_grad and p.grad is not None]
            self.flat_grads = torch.zeros(sum(p.numel() for p in self.grad_params), device=self.grad_params[0].device)
        offset = 0
        for p in self.grad_params:
            p.grad = self.flat_grads[offset : offset + p.numel()].view_as(p)
            offset += p.numel()

    def _capacity_changed(self, entry: StepCapture) -> bool:
        """Every `check_every` replays of a layout (one host sync): whether its occupied samples left the capacity's
        band."""
        if entry.replays_since_check < self.check_every:
            return False
        peak = int(entry.peak)
        entry.peak.zero_()
        entry.replays_since_check = 0
        if self.fixed_capacity is not None:
            if peak > entry.capacity:
                log.warning("a step kept %d samples; the fixed capacity of %d dropped the rest (engine.cuda_graph_capacity)",
                            peak, entry.capacity)
            return False
        wanted = round_up(peak * self.headroom, self.granularity)
        if peak > entry.capacity or wanted < entry.capacity / self.headroom:
            log.info("occupied samples peaked at %d for a capacity of %d: re-capturing", peak, entry.capacity)
            return True
        return False

    def _load(self, entry: StepCapture, batch: Mapping[str, Any]) -> None:
        """Copy the batch's tensors into the graph's inputs (asynchronously); other entries must not change."""
        for key, value in batch.items():
            target = entry.inputs.get(key)
            if key in self.scalars:
                target.fill_(value)  # a host value is a kernel argument: no host-to-device copy, no sync
            elif isinstance(value, Tensor):
                if target is None or target.shape != value.shape:
                    raise ValueError(f"CUDA graph input '{key}' changed shape to {tuple(value.shape)} within one layout")
                target.copy_(value, non_blocking=True)
            elif value != target:
                raise ValueError(f"CUDA graph input '{key}' changed from {target!r} to {value!r}")

    # ---------------------------------------------------------------- optimizer
    def install_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Replace `optimizer.step` with a replay of its captured step (captured on the first call, which runs
        eagerly). `remove_optimizer` puts the original back."""
        make_capturable(optimizer)
        self.optimizer = optimizer

        def step(closure: Callable[[], Any] | None = None) -> None:
            if closure is not None:  # Lightning's manual-optimization closure: nothing to compute
                closure()
            self.optimizer_step()

        optimizer.step = step

    def remove_optimizer(self) -> None:
        if self.optimizer is not None and "step" in vars(self.optimizer):
            del self.optimizer.step
        self.optimizer, self.optimizer_graph = None, None

    def optimizer_step(self) -> None:
        """Replay the captured optimizer step; the first call steps eagerly (creating the optimizer's state), then
        captures."""
        if self.optimizer_graph is not None:
            self.optimizer_graph.replay()
            return
        optimizer = self.optimizer
        eager = type(optimizer).step.__get__(optimizer)
        # the warm-up is this step's real update; the capture records the step without running it
        self.optimizer_graph, _ = warm_and_capture(eager)
        log.info("captured the optimizer step as a CUDA graph")


# (inputs on the GPU, sample capacity or None for exact compaction) -> per-pixel outputs + "occupied" [] count
RenderFn = Callable[[dict[str, Any], int | None], dict[str, Tensor]]


class GraphedRender:
    """Whole-frame renders replayed as CUDA graphs, one per input layout (frame size, which inputs are given).

    The graph marches a fixed capacity of samples. A frame whose occupied samples outgrow it is captured again at
    a larger capacity and rendered again, so every returned frame equals the eager render; that check costs one
    host sync per frame, which inference pays anyway to read the frame back.
    """

    def __init__(self, render_fn: RenderFn, headroom: float = 1.05, granularity: int = 65536) -> None:
        self.render_fn, self.headroom, self.granularity = render_fn, headroom, granularity
        self.entries: dict[tuple, _Captured] = {}
        self.captures = 0

    def __call__(self, inputs: dict[str, Any]) -> dict[str, Tensor]:
        """Render `inputs`: tensors on the GPU, copied into the graph's inputs; any other value (frame size,
        intrinsics, an absent frame index) is baked into the graph, so a new value captures a new graph."""
        key, entry = self._replayed(inputs)
        occupied = int(entry.outputs["occupied"])
        if occupied > entry.capacity:  # samples were dropped: re-capture larger and render this frame again
            entry = self.entries[key] = self._capture(inputs, occupied)
            entry.load(inputs)
            entry.graph.replay()
        return {k: v.clone() for k, v in entry.outputs.items()}

    def launch(self, inputs: dict[str, Any]) -> LaunchedRender:
        """`self(inputs)` without its host sync: the frame is replayed and its outputs copied out of the graph's
        buffers, all queued on the device. Whether the capacity dropped samples is read later (`short`); `redo`
        then renders the frame as `self` does. The launched render keeps its graph alive until it is dropped, so
        a re-capture meanwhile cannot free a graph the device has yet to run."""
        _, entry = self._replayed(inputs)
        outputs = {k: v.clone() for k, v in entry.outputs.items()}
        short = outputs["occupied"] > entry.capacity
        return LaunchedRender(outputs, short, functools.partial(_redo, self, inputs, entry))

    def _replayed(self, inputs: dict[str, Any]) -> tuple[tuple, _Captured]:
        """Replay the graph of the inputs' layout on them (capturing it first if new): (layout key, its capture)."""
        key = tuple(self._layout(k, v) for k, v in sorted(inputs.items()))
        entry = self.entries.get(key)
        if entry is None:
            with torch.no_grad():
                occupied = int(self.render_fn(self._static(inputs), None)["occupied"])
            entry = self.entries[key] = self._capture(inputs, occupied)
        entry.load(inputs)
        entry.graph.replay()
        return key, entry

    def _capture(self, inputs: dict[str, Any], occupied: int) -> _Captured:
        capacity = round_up(occupied * self.headroom, self.granularity)
        static = self._static(inputs)
        graph, outputs = warm_and_capture(torch.no_grad()(lambda: self.render_fn(static, capacity)))
        self.captures += 1
        log.info("captured whole-frame rendering as a CUDA graph at %d samples", capacity)
        return _Captured(graph, static, outputs, capacity)

    @staticmethod
    def _layout(key: str, value: Any) -> tuple:
        return (key, tuple(value.shape), value.dtype) if isinstance(value, Tensor) else (key, value)

    @staticmethod
    def _static(inputs: dict[str, Any]) -> dict[str, Any]:
        """Graph-owned copies of the tensors, other values as they are."""
        return {k: v.clone() if isinstance(v, Tensor) else v for k, v in inputs.items()}


def _redo(graphed: GraphedRender, inputs: dict[str, Any], launched_on: _Captured) -> dict[str, Tensor]:
    """A launched frame rendered again, waiting (`launched_on`: the capture it was launched on, held until now)."""
    del launched_on
    return graphed(inputs)


class _Captured:
    """One captured render: its graph, the static inputs it reads, the outputs it writes, its sample capacity."""

    def __init__(self, graph: torch.cuda.CUDAGraph, inputs: dict[str, Any], outputs: dict[str, Tensor],
                 capacity: int) -> None:
        self.graph, self.inputs, self.outputs, self.capacity = graph, inputs, outputs, capacity

    def load(self, inputs: dict[str, Any]) -> None:
        for key, value in inputs.items():
            if isinstance(value, Tensor):  # the rest is the same by the layout's key
                self.inputs[key].copy_(value, non_blocking=True)
