"""The training step replayed as a CUDA graph computes what the eager step computes (GPU only)."""

from __future__ import annotations

import functools
from types import SimpleNamespace

import pytest
import torch

from ernerf.engine import ExecutionEngine
from ernerf.engine.cuda_graph import GraphedStep, round_up
from ernerf.engine.engine import STEP_SCALARS
from ernerf.systems.talking_head import step_scalar
from tests.systems.test_talking_head import build

gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_round_up_to_the_granularity() -> None:
    assert round_up(1, 16384) == 16384 and round_up(16385, 16384) == 32768 and round_up(0, 8) == 8


def ray_batch(seed: int, n: int = 4096, frame: int = 3, step: int = 10) -> dict:
    """Rays from the ER-NeRF camera distance towards the head box, like TrainRays gives."""
    g = torch.Generator().manual_seed(seed)
    rays_o = torch.zeros(n, 3)
    rays_o[:, 2] = -2.4
    rays_d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g) * 0.15 + torch.tensor([0.0, 0.0, 1.0]), dim=-1)
    batch = {"rays_o": rays_o, "rays_d": rays_d, "rgb": torch.rand(n, 3, generator=g), "bg": torch.rand(n, 3, generator=g),
             "face_mask": torch.rand(n, generator=g) > 0.5, "pixel_index": torch.randint(0, 64 * 64, (n,), generator=g),
             "c2w": torch.eye(4), "audio": torch.randn(8, 16, 80, generator=g), "eye": torch.rand(1, generator=g)}
    batch = {k: v.cuda() for k, v in batch.items()}
    return batch | {"patch_shape": None, "height": 64, "width": 64, "frame_index": torch.tensor([frame], device="cuda"),
                    "step": step_scalar(step), "progress": step_scalar(0.3)}


def graphed_step(system, **kwargs) -> GraphedStep:
    """The system's training step as GraphedStep captures it in training, at a test-sized granularity."""
    return GraphedStep(system.step_outputs, system, scalars=STEP_SCALARS, granularity=1024, **kwargs)


def eager_loss_and_grads(system, batch: dict) -> tuple[torch.Tensor, list[torch.Tensor]]:
    system.zero_grad(set_to_none=True)
    loss = system.step_outputs(batch)["loss"]
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in system.parameters() if p.grad is not None]


def open_system_and_twin() -> tuple:
    """A seeded GPU system that samples every cell without jitter (both paths see the same samples), and its eager
    twin: a copy, so the twin's gradients never touch the graph's."""
    import copy

    torch.manual_seed(0)
    system = build().cuda()
    system.marcher.eval()
    system.grid.occupancy.fill_(True)
    return system, copy.deepcopy(system)


@gpu
@needs_cuda
def test_graph_replays_match_the_eager_step_on_new_batches() -> None:
    system, twin = open_system_and_twin()
    graphed = graphed_step(system)
    graphed(ray_batch(0))
    assert graphed.captures == 1 and graphed.capacity >= int(graphed.outputs["occupied"])
    assert_replays_match_eager(system, twin, graphed, grad_atol=lambda r: 1e-6)
    assert graphed.captures == 1  # new batches replay the one graph


def assert_replays_match_eager(system, twin, graphed: GraphedStep, grad_atol) -> None:
    """Two new batches: the graph's loss and gradients equal the eager twin's (grad_atol: reference -> atol)."""
    for seed, frame in ((1, 5), (2, 7)):
        batch = ray_batch(seed, frame=frame, step=40)
        loss = graphed(batch)["loss"].clone()
        grads = [p.grad.clone() for p in system.parameters() if p.grad is not None]
        ref_loss, ref_grads = eager_loss_and_grads(twin, batch)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-4, atol=1e-6)
        assert len(grads) == len(ref_grads)
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g, r, rtol=1e-3, atol=grad_atol(r))


@gpu
@needs_cuda
def test_level_weights_written_between_replays_reach_the_graph() -> None:
    system, twin = open_system_and_twin()
    for model in (system, twin):  # the coarse-to-fine schedule part-way: a level closed, one opening
        model.field.encoder.open_levels(2.5)
    graphed = graphed_step(system)
    graphed(ray_batch(0))
    for model in (system, twin):  # later steps open more, in place: the captured graph must read the new weights
        model.field.encoder.open_levels(3.25)
    assert_replays_match_eager(system, twin, graphed, grad_atol=lambda r: 1e-6)
    assert graphed.captures == 1


@gpu
@needs_cuda
def test_graph_recaptures_when_the_occupied_samples_outgrow_the_capacity() -> None:
    torch.manual_seed(0)
    system = build().cuda()
    system.grid.occupancy.zero_()
    system.grid.occupancy[: system.grid.occupancy.numel() // 8] = True
    graphed = graphed_step(system, check_every=2)
    graphed(ray_batch(0))
    small = graphed.capacity
    system.grid.occupancy.fill_(True)  # the grid opens up: many more samples per ray
    for seed in range(1, 5):
        graphed(ray_batch(seed))
    assert graphed.captures == 2 and graphed.capacity > small


def frame_builder(base: dict):
    """A batch builder with no random draws (so the graphed and eager steps see the same rays): the frame shifts
    the target colours."""
    def build_batch(frame: torch.Tensor, layout: int = 0) -> dict:  # frame index [1]
        shift = frame.float() * 0.07
        return {**{k: v for k, v in base.items() if k not in ("step", "progress")},
                "rgb": (base["rgb"] + shift) % 1.0, "frame_index": frame}
    return build_batch


def train_beside_the_eager_twin(frames: tuple[int, ...], before_step=None) -> SimpleNamespace:
    """Graphed steps (rays built in the graph, the optimizer captured) on `frames`, each also taken eagerly by the
    twin. `before_step(step, system, graphed)` runs before each step. Returns both systems, the graphed step, both
    optimizers and both runs' losses."""
    system, twin = open_system_and_twin()
    builder = frame_builder(ray_batch(0))
    optimizer = torch.optim.AdamW(system.parameter_groups(), betas=(0.0, 0.99))
    twin_optimizer = torch.optim.AdamW(twin.parameter_groups(), betas=(0.0, 0.99))
    graphed = graphed_step(system, build=builder)
    graphed.install_optimizer(optimizer)
    losses, twin_losses = [], []
    for step, frame in enumerate(frames):
        if before_step is not None:
            before_step(step, system, graphed)
        index, scalars = torch.tensor([frame], device="cuda"), {"step": step_scalar(step), "progress": step_scalar(0.3)}
        losses.append(float(graphed({"frame_index": index, **scalars})["loss"]))
        optimizer.step()
        twin_optimizer.zero_grad(set_to_none=True)
        loss = twin.step_outputs(builder(index) | scalars)["loss"]
        loss.backward()
        twin_optimizer.step()
        twin_losses.append(float(loss.detach()))
    return SimpleNamespace(system=system, twin=twin, graphed=graphed, optimizer=optimizer,
                           twin_optimizer=twin_optimizer, losses=losses, twin_losses=twin_losses)


@gpu
@needs_cuda
def test_rays_built_in_the_graph_and_a_captured_optimizer_train_like_the_eager_step() -> None:
    run = train_beside_the_eager_twin((1, 4, 2, 6, 3))
    system, twin, graphed, twin_optimizer = run.system, run.twin, run.graphed, run.twin_optimizer
    assert graphed.captures == 1 and graphed.optimizer_graph is not None
    assert run.losses == pytest.approx(run.twin_losses, rel=1e-4)  # steps 2..5 start from the optimizer graph's updates
    # With betas (0, 0.99) Adam moves every entry by ~lr * sign(gradient) at first. A hash entry whose gradient is
    # a near-cancelling sum of a few samples can flip sign with the atomics' summation order (not deterministic),
    # and then differs by up to 2 * sum_t sqrt((1 - 0.99^t) / 0.01) = 16.7 steps after 5 steps. Networks (dense
    # gradients) agree to 5% of one step everywhere; grid entries all but 1 in 10^3 (a wrong optimizer graph moves
    # most of them), none beyond that bound. (This check, all entries to 5%, failed once in a full GPU run.)
    lr = {id(q): g["lr"] for g in twin_optimizer.param_groups for q in g["params"]}
    grid_params = {id(q) for q in twin.field.encoder.parameters()}
    off = total = 0
    for p, q in zip(system.parameters(), twin.parameters()):
        step = lr.get(id(q), 0.0)
        if id(q) not in grid_params:
            torch.testing.assert_close(p, q, rtol=0, atol=0.05 * step + 1e-7)
            continue
        off += int(((p - q).abs() > 0.05 * step + 1e-7).sum())
        total += p.numel()
        assert float((p - q).abs().max()) <= 16.7 * step + 1e-7
    assert off <= total * 1e-3, f"{off} of {total} grid entries differ by more than 5% of a step"
    graphed.remove_optimizer()
    assert "step" not in vars(run.optimizer)


def test_gradients_are_bound_to_the_flat_buffer_again_after_they_were_dropped() -> None:
    """Lightning drops every .grad (zero_grad(set_to_none=True)) before each validation; the next capture must
    point them into the buffer the optimizer's graph reads again, at the same addresses."""
    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    module[1].bias.requires_grad_(False)
    graphed = GraphedStep(lambda batch, capacity: {}, module)
    module(torch.randn(5, 3)).sum().backward()
    graphed.bind_gradients()
    trained = [p for p in module.parameters() if p.requires_grad]
    addresses = [p.grad.data_ptr() for p in trained]
    assert graphed.grad_params == trained and graphed.flat_grads.numel() == sum(p.numel() for p in trained)
    module.zero_grad(set_to_none=True)
    graphed.bind_gradients()
    assert [p.grad.data_ptr() for p in trained] == addresses
    graphed.flat_grads.fill_(2.0)  # what a replayed backward writes is what the parameters' gradients hold
    assert all(bool((p.grad == 2.0).all()) for p in trained) and module[1].bias.grad is None


@gpu
@needs_cuda
def test_a_capture_after_the_gradients_were_dropped_still_trains_like_the_eager_step() -> None:
    """The training run's order of events: steps, a validation (Lightning sets every .grad to None), a re-capture
    (the occupied samples moved), more steps. The optimizer's graph must see the new capture's gradients."""
    def validate_then_recapture(step: int, system, graphed: GraphedStep) -> None:
        if step == 3:
            system.zero_grad(set_to_none=True)  # Lightning's on_validation_model_zero_grad
            graphed.layouts.clear()  # the next call captures again, as when the occupied samples moved

    run = train_beside_the_eager_twin((1, 4, 2, 6, 3, 5), validate_then_recapture)
    assert run.graphed.captures == 2
    # steps 5 and 6 start from the updates of the new capture: zero gradients there leave the weights a step behind
    assert run.losses == pytest.approx(run.twin_losses, rel=1e-4)
    run.graphed.remove_optimizer()


@gpu
@needs_cuda
@pytest.mark.parametrize("fixed", [None, 2048], ids=["adaptive", "fixed"])
def test_capacity_follows_the_occupied_samples_unless_fixed(fixed: int | None, caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    system = build().cuda()
    system.marcher.eval()
    system.grid.occupancy.copy_(torch.rand(system.grid.occupancy.shape, device="cuda") < 0.03)
    graphed = graphed_step(system, check_every=2, fixed_capacity=fixed)
    graphed(ray_batch(0))
    first = graphed.capacity
    system.grid.occupancy.fill_(True)  # far more samples than the first capture saw
    for seed in range(1, 5):
        graphed(ray_batch(seed))
    if fixed is None:
        assert graphed.captures == 2 and graphed.capacity > first
    else:
        assert graphed.captures == 1 and graphed.capacity == first == fixed
        assert "dropped the rest" in caplog.text


def test_saved_optimizer_states_hold_plain_learning_rates() -> None:
    """A captured optimizer keeps learning rates as device tensors; checkpoints must resume without CUDA graphs."""
    checkpoint = {"optimizer_states": [{"param_groups": [{"lr": torch.tensor(0.01), "capturable": True},
                                                         {"lr": 0.001, "capturable": False}]}]}
    ExecutionEngine().on_save_checkpoint(None, None, checkpoint)
    groups = checkpoint["optimizer_states"][0]["param_groups"]
    assert groups == [{"lr": pytest.approx(0.01), "capturable": False}, {"lr": 0.001, "capturable": False}]
    assert all(isinstance(g["lr"], float) for g in groups)


def test_make_capturable_moves_step_counts_and_learning_rates_to_tensors() -> None:
    from ernerf.engine.cuda_graph import make_capturable

    param = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([param], lr=0.1)
    param.grad = torch.ones(3)
    optimizer.step()
    make_capturable(optimizer)
    group = optimizer.param_groups[0]
    assert group["capturable"] and isinstance(group["lr"], torch.Tensor) and float(group["lr"]) == pytest.approx(0.1)
    assert optimizer.state[param]["step"].dtype == torch.float32
    with pytest.raises(ValueError, match="capturable"):
        make_capturable(torch.optim.SGD([param], lr=0.1))


def sparse_gpu_system() -> tuple:
    """A small system on the GPU whose grid holds a sixteenth of its cells (few samples a frame), and a background."""
    torch.manual_seed(0)
    system = build().cuda().eval()
    system.grid.occupancy.zero_()
    system.grid.occupancy[: system.grid.occupancy.numel() // 16] = True
    return system, torch.rand(48, 48, 3, device="cuda")


@gpu
@needs_cuda
def test_graphed_frames_equal_eager_frames_and_grow_the_capacity_when_needed() -> None:
    from ernerf.engine.cuda_graph import GraphedRender

    system, bg = sparse_gpu_system()
    eager = ExecutionEngine(render_cuda_graph=False).attach(system)
    graphs = ExecutionEngine().attach(system)  # the default: whole frames replayed as graphs

    def frame(seed: int, engine: ExecutionEngine) -> dict:
        g = torch.Generator().manual_seed(seed)
        c2w = torch.eye(4)
        c2w[:3, 3] = torch.tensor([0.0, 0.0, -2.4]) + 0.05 * torch.randn(3, generator=g)
        system.use_execution(engine)
        return system.render_image(c2w, (50.0, 50.0, 24.0, 24.0), 48, 48, torch.randn(8, 16, 80, generator=g),
                                   torch.rand(1, generator=g), None, bg)

    graphs.graphed_render = GraphedRender(functools.partial(system.render_frame, chunk=graphs.eval_chunk_gpu),
                                          granularity=1024)
    first = frame(0, graphs)
    assert graphs.graphed_render.captures == 1
    small = next(iter(graphs.graphed_render.entries.values())).capacity
    system.grid.occupancy.fill_(True)  # many more samples: the graph must re-capture, not drop them
    for seed in (1, 2):
        got, ref = frame(seed, graphs), frame(seed, eager)
        assert got.keys() == ref.keys() == first.keys()
        for key in ref:
            torch.testing.assert_close(got[key], ref[key], rtol=1e-4, atol=1e-5)
    assert graphs.graphed_render.captures == 2 and eager.graphed_render is None
    assert next(iter(graphs.graphed_render.entries.values())).capacity > small
    tight = ExecutionEngine(render_cuda_graph_headroom=1.0).attach(system)  # the engine passes its headroom on
    for seed in (3, 4):
        got, ref = frame(seed, tight), frame(seed, eager)
        for key in ref:
            torch.testing.assert_close(got[key], ref[key], rtol=1e-4, atol=1e-5)
    assert tight.graphed_render.headroom == 1.0


@gpu
@needs_cuda
def test_launched_frames_read_after_the_next_launch_equal_eager_frames_and_redo_those_that_fell_short() -> None:
    """engine.render_async: a frame is read only after the next one was launched on the same graph (which overwrites
    the graph's buffers); a frame launched on a graph too small for it is flagged short and rendered again."""
    from ernerf.engine.cuda_graph import GraphedRender

    system, bg = sparse_gpu_system()
    eager = ExecutionEngine(render_cuda_graph=False).attach(system)
    graphs = ExecutionEngine(render_async=True).attach(system)
    graphs.graphed_render = GraphedRender(functools.partial(system.render_frame, chunk=graphs.eval_chunk_gpu),
                                          granularity=1024)

    def inputs(seed: int) -> tuple:
        g = torch.Generator().manual_seed(seed)
        c2w = torch.eye(4)
        c2w[:3, 3] = torch.tensor([0.0, 0.0, -2.4]) + 0.05 * torch.randn(3, generator=g)
        return (c2w.cuda(), (50.0, 50.0, 24.0, 24.0), 48, 48, torch.randn(8, 16, 80, generator=g).cuda(),
                torch.rand(1, generator=g).cuda(), None, bg)

    def eager_frame(seed: int) -> dict:
        system.use_execution(eager)
        return system.render_image(*inputs(seed))

    system.use_execution(graphs)
    launched = [system.launch_image(*inputs(seed)) for seed in (0, 1, 2)]  # all three queued before any is read
    assert graphs.graphed_render.captures == 1 and all(not bool(f.short) for f in launched)
    refs = [eager_frame(seed) for seed in (0, 1, 2)]
    for frame, ref in zip(launched, refs):
        assert frame.outputs.keys() == ref.keys()
        for key in ref:
            torch.testing.assert_close(frame.waited()[key], ref[key], rtol=1e-4, atol=1e-5)
    system.grid.occupancy.fill_(True)  # many more samples than the graph holds
    system.use_execution(graphs)
    short = system.launch_image(*inputs(3))
    assert bool(short.short) and graphs.graphed_render.captures == 1  # flagged, not yet re-captured
    ref = eager_frame(3)
    system.use_execution(graphs)
    got = short.waited()  # rendered again, on a graph captured larger
    assert graphs.graphed_render.captures == 2
    for key in ref:
        torch.testing.assert_close(got[key], ref[key], rtol=1e-4, atol=1e-5)
    ExecutionEngine(render_async=False).attach(system)
    assert system.launch_image(*inputs(4)).short is None  # waited for, as render_image: nothing left to check


@gpu
@needs_cuda
def test_graph_of_the_compiled_field_matches_the_eager_step() -> None:
    """engine.compile_field=auto's training path: torch.compile (inductor) inside the captured step."""
    from ernerf.engine.compile import CompiledOrEager

    system, twin = open_system_and_twin()
    engine = ExecutionEngine().attach(system)
    engine.train_field = CompiledOrEager(system.field.forward)  # what on_fit_start does on a GPU
    graphed = graphed_step(system)
    graphed(ray_batch(0))
    assert engine.train_field.active and engine.train_field.compiled_modes == {True, False}
    # fused kernels sum in another order: gradients to 1e-5 of their largest entry
    assert_replays_match_eager(system, twin, graphed, grad_atol=lambda r: 1e-5 * max(r.abs().max().item(), 1.0))


def lips_builder(base: dict, side: int = 24):
    """Layout 0: a side x side patch (with its patch shape); layout 1: the random rays of `base`. No random draws."""
    rays = frame_builder(base)

    def build_batch(frame: torch.Tensor, layout: int = 0) -> dict:
        batch = rays(frame)
        if layout == 1:
            return batch
        return {k: (v[: side * side] if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == len(base["rgb"]) else v)
                for k, v in batch.items()} | {"patch_shape": (side, side)}
    return build_batch


@gpu
@needs_cuda
@pytest.mark.parametrize("loss", ["lips_dssim", "lips_lpips"])
def test_the_lips_stage_replays_one_graph_per_turn_and_matches_the_eager_step(loss: str, tmp_path) -> None:
    """Lips patches and random rays in turn: two graphs (captured once each), one gradient buffer, the patch loss
    inside the graph; each replay's loss and gradients equal the eager step's."""
    import copy

    overrides = [f"loss={loss}"]
    if loss == "lips_lpips":
        torchvision = pytest.importorskip("torchvision")
        backbone = tmp_path / "alexnet.pth"  # random weights: the graph is tested, not the perceptual judgement
        torch.save(torchvision.models.alexnet().state_dict(), backbone)
        overrides.append(f"loss.perceptual.lpips_backbone={backbone}")
    torch.manual_seed(0)
    system = build(*overrides).cuda()
    system.marcher.eval()
    system.grid.occupancy.fill_(True)
    twin = copy.deepcopy(system)
    builder = lips_builder(ray_batch(0))
    graphed = graphed_step(system, build=builder)
    for step, (frame, layout) in enumerate(((1, 0), (1, 1), (4, 0), (2, 1), (6, 0), (3, 1))):
        scalars = {"step": step_scalar(40 + step), "progress": step_scalar(0.3)}
        index = torch.tensor([frame], device="cuda")
        outputs = graphed({"frame_index": index, "layout": layout, **scalars})
        loss_value = outputs["loss"].clone()
        grads = [p.grad.clone() for p in system.parameters() if p.grad is not None]
        ref_loss, ref_grads = eager_loss_and_grads(twin, builder(index, layout) | scalars)
        assert ("loss_lip_perceptual" in outputs) == (layout == 0)
        torch.testing.assert_close(loss_value, ref_loss, rtol=1e-4, atol=1e-6)
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g, r, rtol=1e-3, atol=1e-6)
    assert graphed.captures == 2 and set(graphed.layouts) == {0, 1}


@gpu
@needs_cuda
def test_a_torso_step_under_head_layers_replays_as_a_graph_like_the_eager_step() -> None:
    """The torso stage's step with the frozen head's layers (a gather instead of the march) in a graph."""
    import copy

    from ernerf.systems.head_layers import HeadLayers

    torch.manual_seed(0)
    system = build("stage=torso").cuda()
    layers = torch.rand(10, 64 * 64, 4, device="cuda")
    layers[..., :3] *= layers[..., 3:]  # colour premultiplied by opacity
    system.use_head_layers(HeadLayers(layers.half()))
    twin = copy.deepcopy(system)
    graphed = graphed_step(system)
    for seed, frame in ((0, 3), (1, 5), (2, 7)):
        batch = ray_batch(seed, frame=frame, step=40)
        batch |= {"torso_mask": torch.rand(4096, device="cuda"), "head_mask": torch.rand(4096, device="cuda") > 0.5}
        loss = graphed(batch)["loss"].clone()
        grads = [p.grad.clone() for p in system.parameters() if p.grad is not None]
        ref_loss, ref_grads = eager_loss_and_grads(twin, batch)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-4, atol=1e-6)
        assert grads and len(grads) == len(ref_grads)  # the torso's parameters, the head's frozen
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g, r, rtol=1e-3, atol=1e-6)
    assert graphed.captures == 1
