"""The execution engine: its config group is its defaults, it runs beside the system (never inside its checkpoint),
and on a CPU the eager engine and the default one train and render the same model bit for bit."""

from __future__ import annotations

import hashlib
import inspect
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from ernerf.engine import ExecutionEngine
from ernerf.systems.execution import EagerExecution
from tests.conftest import CONF_DIR, compose


def settings(engine: ExecutionEngine) -> dict:
    return {name: getattr(engine, name) for name in inspect.signature(ExecutionEngine).parameters}


def test_the_default_engine_config_is_the_engines_own_defaults_and_eager_runs_plain_pytorch() -> None:
    from hydra.utils import instantiate

    defaults = {name: p.default for name, p in inspect.signature(ExecutionEngine).parameters.items()}
    assert OmegaConf.to_container(OmegaConf.load(CONF_DIR / "engine" / "default.yaml")) == {
        "_target_": "ernerf.engine.ExecutionEngine", **defaults}
    assert settings(instantiate(compose("train", ["subject=x"]).engine)) == settings(ExecutionEngine())
    eager = instantiate(compose("train", ["subject=x", "engine=eager"]).engine)
    plain = EagerExecution()
    assert (eager.compile_field, eager.cuda_graph, eager.tf32, eager.render_cuda_graph) == (False, False, False, False)
    assert (eager.eval_chunk, eager.eval_chunk_gpu) == (plain.eval_chunk, plain.eval_chunk_gpu)
    for app in ("infer", "evaluate"):  # applications choose the engine too, where they load a checkpoint
        assert compose(app, ["subject=x", "audio=y.wav"] if app == "infer" else ["subject=x"]).engine == compose(
            "train", ["subject=x"]).engine


def test_attaching_runs_the_systems_steps_and_renders_and_a_cpu_fit_stays_eager(caplog) -> None:
    from tests.systems.test_talking_head import build

    system = build()
    assert isinstance(system.execution, EagerExecution) and system.automatic_optimization
    engine = ExecutionEngine(cuda_graph=True).attach(system)
    assert system.execution is engine and engine.system is system
    trainer = SimpleNamespace(accumulate_grad_batches=1, gradient_clip_val=None, precision="32-true", world_size=1,
                              datamodule=None)
    with caplog.at_level(logging.WARNING, logger="ernerf.engine.engine"):
        engine.on_fit_start(trainer, system)
    assert engine.graphed is None and system.automatic_optimization  # Lightning keeps stepping the optimizer
    assert "engine.cuda_graph=True but the step runs eagerly: not on a CUDA device" in caplog.text
    caplog.clear()
    trainer.datamodule = SimpleNamespace(fixed_layouts=False)  # lips squares of each frame's own size
    with caplog.at_level(logging.WARNING, logger="ernerf.engine.engine"):
        engine.on_fit_start(trainer, system)
    assert "patches of varying size (datamodule.sampler.size=null)" in caplog.text


def digest(tensors: dict) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def test_the_eager_engine_trains_and_renders_as_the_default_one_on_a_cpu(tmp_path: Path) -> None:
    """On a CPU the default engine compiles nothing and captures no graph: both engines run the same kernels, so a
    short head run ends with the same weights, optimizer state and validation PSNR, bit for bit."""
    from tests.synthetic import write_synthetic_subject
    from tests.test_train import tiny_config
    from ernerf.apps.train import train

    results = {}
    for engine in ("default", "eager"):
        write_synthetic_subject(tmp_path / engine / "data" / "sphere", num_frames=12, size=16)
        metrics = train(tiny_config(tmp_path / engine, 6, f"engine={engine}", "trainer.val_check_interval=6"))
        ckpt = torch.load(tmp_path / engine / "runs" / "sphere" / "head" / "checkpoints" / "last.ckpt",
                          map_location="cpu", weights_only=False)
        moments = {f"{i}.{k}": v for i, state in ckpt["optimizer_states"][0]["state"].items() for k, v in state.items()}
        results[engine] = (digest(ckpt["state_dict"]), digest(moments), metrics["val/psnr"])
    assert results["eager"] == results["default"] and results["default"][2] > 5  # val/psnr of a learning run


def test_a_launched_frame_on_a_cpu_is_the_rendered_frame_with_nothing_left_to_check() -> None:
    from ernerf.systems.execution import LaunchedRender, to_device
    from tests.systems.test_talking_head import build

    torch.manual_seed(0)
    system = build("stage=torso").eval()
    ExecutionEngine().attach(system)
    g = torch.Generator().manual_seed(1)
    c2w = torch.eye(4)
    c2w[:3, 3] = torch.tensor([0.0, 0.0, -2.4])
    args = (c2w, (30.0, 30.0, 12.0, 12.0), 24, 24, torch.randn(8, 16, 80, generator=g), None, None,
            torch.rand(24, 24, 3, generator=g))
    launched = system.launch_image(*args, torso_frame=3)
    rendered = system.render_image(*args, torso_frame=3)
    assert isinstance(launched, LaunchedRender) and launched.short is None and launched.waited() is launched.outputs
    assert launched.outputs.keys() == rendered.keys() == {"rgb", "depth", "opacity", "torso_alpha"}
    for key in rendered:
        assert torch.equal(launched.outputs[key], rendered[key])
    host = torch.arange(6.0)
    assert to_device(host, "cpu") is host  # on a CPU nothing is copied
    redone = LaunchedRender({"rgb": torch.zeros(1)}, torch.tensor(True), lambda: {"rgb": torch.ones(1)})
    assert torch.equal(redone.waited()["rgb"], torch.ones(1))  # a frame that fell short is rendered again


def test_a_render_graph_headroom_under_one_is_refused_in_one_line() -> None:
    from ernerf.errors import ErnerfError

    with pytest.raises(ErnerfError, match="render_cuda_graph_headroom must be at least 1.0"):
        ExecutionEngine(render_cuda_graph_headroom=0.9)
    assert ExecutionEngine(render_cuda_graph_headroom=1.0).render_cuda_graph_headroom == 1.0


def test_frames_render_as_graphs_on_a_gpu_in_one_chunk_but_not_while_a_training_graph_is_live() -> None:
    """No render graph is captured between replays of a captured training step (validation in a run renders
    eagerly); before the step's first capture (the torso stage's frozen head layers) and outside training it is."""
    gpu, cpu = torch.device("cuda"), torch.device("cpu")
    engine = ExecutionEngine()
    assert engine.renders_as_graph(gpu, True) and not engine.renders_as_graph(gpu, False)
    assert not engine.renders_as_graph(cpu, True)
    assert not ExecutionEngine(render_cuda_graph=False).renders_as_graph(gpu, True)
    engine.graphed = SimpleNamespace(captures=0)  # a fit set graphs up, nothing captured yet
    assert engine.renders_as_graph(gpu, True)
    engine.graphed.captures = 1
    assert not engine.renders_as_graph(gpu, True)
