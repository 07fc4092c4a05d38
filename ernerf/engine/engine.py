"""The execution engine: how a TalkingHeadSystem's training steps and renders run on the machine at hand.

The system says what is computed (`step_outputs`, `render_frame`, its field); the engine chooses how: eagerly or
replayed as CUDA graphs, with the face field compiled or not, matrix products in TF32 or fp32, the gradients of
several processes averaged after each replayed step, whole frames rendered in chunks of how many rays, and whole-frame
renders replayed as graphs. Its settings come from conf/engine/ and never enter a checkpoint.

It is a Lightning callback: train.py and the benches put it in the Trainer beside the module, as Lightning puts
precision and distribution in Trainer plugins, and it attaches itself to the module when the Trainer sets up. Outside
a Trainer (inference, evaluation) `ernerf.systems.loading.load_system` attaches it to the loaded system.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator
from typing import Any, Protocol

import lightning as L
import torch
from torch import Tensor

from ernerf.engine.compile import CompiledOrEager
from ernerf.engine.cuda_graph import BuildFn, GraphedRender, GraphedStep
from ernerf.errors import ErnerfError
from ernerf.systems.execution import EagerExecution, FieldFn, LaunchedRender, RenderFn, StepFn

log = logging.getLogger(__name__)

# The per-step numbers the system adds to a training batch (`step_scalar`), as the graph reads them.
STEP_SCALARS = {"step": torch.long, "progress": torch.float32}
MODES = (True, False, "auto")


class DeviceBatchSource(Protocol):
    """What the engine asks of the Trainer's data module (SubjectDataModule) to draw rays inside the graph."""

    @property
    def fixed_layouts(self) -> bool:
        """Whether its training batches come in a fixed set of shapes (one per sampler turn)."""

    def device_batches(self) -> BuildFn | None:
        """`(frame index, layout) -> ray batch` built on the device without a host sync, or None where it cannot."""


@contextlib.contextmanager
def tf32_matmuls(enabled: bool) -> Iterator[None]:
    """FP32 matrix products on the GPU's tensor cores (TF32: 10-bit mantissa inputs, fp32 accumulation) inside."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def thin_sigterm_broadcast(trainer: L.Trainer, every_n_steps: int) -> bool:
    """Let Lightning's SIGTERM broadcast run on one training step in `every_n_steps`; True if it was thinned.

    Lightning (>= 2.5, PR #20825) broadcasts a SIGTERM flag from rank 0 before *every* training step under DDP: a
    tensor copied from the host, a broadcast and an `.item()`, i.e. two host syncs per step that stall the host
    until the GPU has drained its queue (Lightning issue #21487; docs/multigpu.md). It offers no setting for it, so
    this wraps the epoch loop's private hook, the one place the project touches Lightning's internals (a test pins
    the hook's name). Every rank still calls it at the same steps, so all ranks stop together, at most
    `every_n_steps` later."""
    loop = trainer.fit_loop.epoch_loop
    broadcast = getattr(loop, "_broadcast_sigterm_tensor", None)  # absent in other Lightning versions: left alone
    if broadcast is None or every_n_steps <= 1 or getattr(broadcast, "thinned", False):
        return False  # (a second fit on the same trainer must not thin the thinned one again)
    calls = 0

    def thinned() -> None:
        nonlocal calls
        if calls % every_n_steps == 0:
            broadcast()
        calls += 1

    thinned.thinned = True
    loop._broadcast_sigterm_tensor = thinned
    return True


def average_gradients(flat_grads: Tensor, world_size: int) -> None:
    """Average the gradients over processes: one all-reduce of the flat buffer (DDP's reducer is not armed in manual
    optimisation, and its per-bucket hooks could not run inside a captured backward)."""
    flat_grads.div_(world_size)
    torch.distributed.all_reduce(flat_grads)


class ExecutionEngine(EagerExecution, L.Callback):
    """Runs a TalkingHeadSystem's steps and renders as configured (conf/engine/default.yaml explains each setting).

    compile_field: torch.compile the face field; auto = in training steps on a GPU, true = renders too, false = never.
    cuda_graph: replay each training step (rays, forward, backward, then the optimizer) as CUDA graphs; auto = on a
        CUDA device when the steps allow it (batches of fixed shapes, no gradient accumulation or clipping, no fp16
        loss scaling).
    cuda_graph_headroom, cuda_graph_capacity: the graphed step's sample capacity (GraphedStep's headroom and
        fixed_capacity).
    tf32: TF32 matrix products in training steps and renders. render_cuda_graph: replay whole-frame renders on a GPU,
        at the occupied samples of the frame that captured the graph times render_cuda_graph_headroom.
    render_async: graphed frames that a caller launches (`launch`: infer.py, serve.py) are not waited for, so the host
        prepares the next frame while the device renders this one.
    eval_chunk, eval_chunk_gpu: rays rendered at once on a CPU, on a GPU.
    sigterm_every_n_steps: under DDP, Lightning's per-step SIGTERM check only every n steps (1: every step).
    """

    def __init__(self, compile_field: bool | str = "auto", cuda_graph: bool | str = "auto",
                 cuda_graph_headroom: float = 1.2, cuda_graph_capacity: int | None = None, tf32: bool = True,
                 render_cuda_graph: bool = True, render_cuda_graph_headroom: float = 1.05, render_async: bool = False,
                 eval_chunk: int = 4096, eval_chunk_gpu: int = 262144, sigterm_every_n_steps: int = 50) -> None:
        super().__init__(eval_chunk, eval_chunk_gpu)
        for name, mode in (("compile_field", compile_field), ("cuda_graph", cuda_graph)):
            if mode not in MODES:
                raise ErnerfError(f"engine.{name} must be true, false or auto, got {mode!r}.")
        self.compile_field, self.cuda_graph, self.tf32 = compile_field, cuda_graph, bool(tf32)
        self.cuda_graph_headroom, self.cuda_graph_capacity = float(cuda_graph_headroom), cuda_graph_capacity
        self.render_cuda_graph, self.sigterm_every_n_steps = bool(render_cuda_graph), int(sigterm_every_n_steps)
        if render_cuda_graph_headroom < 1.0:
            raise ErnerfError("engine.render_cuda_graph_headroom must be at least 1.0, "
                              f"got {render_cuda_graph_headroom}.")
        self.render_cuda_graph_headroom, self.render_async = float(render_cuda_graph_headroom), bool(render_async)
        self.system: Any = None  # the TalkingHeadSystem attached
        self.train_field: FieldFn | None = None  # the field's forward in training steps
        self.render_field: FieldFn | None = None  # and in whole-frame renders
        self.graphed: GraphedStep | None = None  # set up when a fit starts and graphs apply
        self.graphed_render: GraphedRender | None = None  # made on the first whole-frame render on a GPU

    # ---------------------------------------------------------------- attaching
    def attach(self, system: Any) -> ExecutionEngine:
        """Run `system`'s computations from now on (`TalkingHeadSystem.use_execution`); returns the engine."""
        compiled = CompiledOrEager(system.field.forward) if self.compile_field is True else None
        self.system, self.graphed, self.graphed_render = system, None, None
        self.train_field = self.render_field = compiled or system.field.forward
        system.use_execution(self)
        return self

    # ---------------------------------------------------------------- the Execution the system calls
    @property
    def automatic_optimization(self) -> bool:
        """Lightning steps the optimizer, except under graphs: `train_step` replays the optimizer's graph."""
        return self.graphed is None

    def field_forward(self, field: torch.nn.Module, training: bool) -> FieldFn:
        """The attached system's field, compiled where configured."""
        return self.train_field if training else self.render_field

    def train_step(self, step_fn: StepFn, batch: dict[str, Any]) -> dict[str, Tensor]:
        with tf32_matmuls(self.tf32):
            return step_fn(batch, None) if self.graphed is None else self._graphed_step(batch)

    def _graphed_step(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Manual optimisation: replay data + forward + backward, then the optimizer's graph and the scheduler."""
        outputs = self.graphed(batch)
        optimizer = self.system.optimizers()
        if self.graphed.optimizer is None:  # after Lightning restored a checkpoint's optimizer state
            self.graphed.install_optimizer(optimizer.optimizer)
        optimizer.step()  # through Lightning, which counts the step; replays the optimizer's graph
        scheduler = self.system.lr_schedulers()
        if scheduler is not None:
            scheduler.step()
        return outputs

    def render(self, render_fn: RenderFn, inputs: dict[str, Any], rays: int, device: torch.device) -> dict[str, Tensor]:
        """A whole frame; on a GPU, in one chunk, replayed as a CUDA graph when `renders_as_graph` (the same frame)."""
        chunk = self.render_chunk(device)
        with tf32_matmuls(self.tf32):
            if not self.renders_as_graph(device, chunk >= rays):
                return render_fn(inputs, None, chunk)
            return self._graphed_render(render_fn, chunk)(inputs)

    def launch(self, render_fn: RenderFn, inputs: dict[str, Any], rays: int, device: torch.device) -> LaunchedRender:
        """`render`, and with `render_async` a graphed frame is not waited for (`GraphedRender.launch`)."""
        chunk = self.render_chunk(device)
        if not self.render_async or not self.renders_as_graph(device, chunk >= rays):
            return LaunchedRender(self.render(render_fn, inputs, rays, device))
        with tf32_matmuls(self.tf32):
            return self._graphed_render(render_fn, chunk).launch(inputs)

    def _graphed_render(self, render_fn: RenderFn, chunk: int) -> GraphedRender:
        if self.graphed_render is None:
            self.graphed_render = GraphedRender(functools.partial(render_fn, chunk=chunk),
                                                headroom=self.render_cuda_graph_headroom)
        return self.graphed_render

    def renders_as_graph(self, device: torch.device, one_chunk: bool) -> bool:
        """Whether a whole frame renders as a CUDA graph: render_cuda_graph, on a GPU, in one chunk, and not while a
        captured training step is live. Validation in a run renders eagerly: a render graph captured again between
        replays of the training graph preceded crashes in the next training replay (docs/evaluation.md, "Head runs
        that fall"), and a validation's few frames gain little from a graph."""
        training_graph = self.graphed is not None and self.graphed.captures > 0
        return self.render_cuda_graph and device.type == "cuda" and one_chunk and not training_graph

    # ---------------------------------------------------------------- Lightning
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.attach(pl_module)
        if stage == "fit" and trainer.world_size > 1:
            thin_sigterm_broadcast(trainer, self.sigterm_every_n_steps)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """On a GPU: compile the field for training (compile_field=auto) and replay the step as CUDA graphs when asked
        for and possible."""
        if self.compile_field == "auto" and pl_module.device.type == "cuda":
            self.train_field = CompiledOrEager(pl_module.field.forward)
        if self.cuda_graph is False:
            return
        datamodule: DeviceBatchSource | None = trainer.datamodule
        varying = datamodule is not None and not datamodule.fixed_layouts
        reasons = [why for why, bad in (("not on a CUDA device", pl_module.device.type != "cuda"),
                                        ("gradient accumulation", trainer.accumulate_grad_batches != 1),
                                        ("gradient clipping", bool(trainer.gradient_clip_val)),
                                        ("fp16 loss scaling", str(trainer.precision).startswith("16")),
                                        ("patches of varying size (datamodule.sampler.size=null)", varying)) if bad]
        if reasons:
            if self.cuda_graph is True or pl_module.device.type == "cuda":
                log.warning("engine.cuda_graph=%s but the step runs eagerly: %s", self.cuda_graph, "; ".join(reasons))
            return
        build = datamodule.device_batches() if datamodule is not None else None
        reduce = functools.partial(average_gradients, world_size=trainer.world_size) if trainer.world_size > 1 else None
        self.graphed = GraphedStep(pl_module.step_outputs, pl_module, scalars=STEP_SCALARS, build=build,
                                   headroom=self.cuda_graph_headroom, fixed_capacity=self.cuda_graph_capacity,
                                   reduce=reduce)
        log.info("training step as CUDA graphs (%s)", "rays drawn in the graph" if build else "batches copied in")

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        """Under DDP with graphs: keep the step out of DDP's reducer. Its forward would otherwise do the reducer's
        per-step bookkeeping (runtime stats, `prepare_for_forward`) for a backward that never reaches it: the
        graph's gradients are averaged by `average_gradients`. Lightning sets the flag back after each forward, so
        it is cleared before every step."""
        wrapper = trainer.strategy.model if self.graphed is not None else None
        if isinstance(wrapper, torch.nn.parallel.DistributedDataParallel):
            wrapper.require_backward_grad_sync = False

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.graphed is not None:
            self.graphed.remove_optimizer()

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        """Plain-number learning rates in saved optimizer states (a captured optimizer holds device tensors), so a
        checkpoint resumes anywhere, with or without CUDA graphs."""
        for state in checkpoint.get("optimizer_states", []):
            for group in state.get("param_groups", []):
                if isinstance(group.get("lr"), Tensor):
                    group["lr"] = float(group["lr"])
                if group.get("capturable"):
                    group["capturable"] = False
