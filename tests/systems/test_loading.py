"""load_system: a checkpoint is the model, and where it is loaded decides how it runs. A model trained on a GPU with
the Triton kernels renders on a CPU (and the reverse, GPU-marked); checkpoints with the execution settings that
earlier versions saved still load."""

from __future__ import annotations

import copy
from pathlib import Path

import lightning as L
import pytest
import torch

from ernerf.engine import ExecutionEngine
from ernerf.errors import ErnerfError
from ernerf.systems.loading import EXECUTION_HPARAMS, load_system
from ernerf.systems.talking_head import TalkingHeadSystem
from tests.systems.test_talking_head import build

# What a checkpoint of a GPU run with experiment=head_fast_gpu names (its tri-plane on the Triton kernels); built
# here with the PyTorch backend, which a CPU can construct without triton.
GPU_RUN = ("experiment=head_fast_gpu", "encoder.backend=torch")
OLD_EXECUTION_SETTINGS = {"eval_chunk": 4096, "eval_chunk_gpu": 262144, "compile_field": "auto", "cuda_graph": "auto",
                          "tf32": True, "render_cuda_graph": True, "cuda_graph_headroom": 1.2, "cuda_graph_capacity": None,
                          "cuda_graph_allreduce_in_graph": False}  # a checkpoint of the sessions before the engine


def save(system: TalkingHeadSystem, path: Path, **hparams: object) -> Path:
    """`system` as train.py checkpoints it, its hyper-parameters updated by `hparams`."""
    torch.save({"state_dict": system.state_dict(), "hyper_parameters": {**copy.deepcopy(dict(system.hparams)), **hparams},
                "pytorch-lightning_version": L.__version__}, path)
    return path


def on_triton(hparams: dict) -> dict:
    """The field's hyper-parameters as a GPU run with the Triton hash grid saves them."""
    field = copy.deepcopy(hparams["field"])
    field["encoder"]["backend"] = "triton"
    return field


def frame(system: TalkingHeadSystem) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    c2w = torch.eye(4)
    c2w[2, 3] = -2.4
    return system.render_image(c2w, (9.0, 9.0, 4.0, 4.0), 8, 8, torch.randn(8, 16, 80), torch.ones(1), 2,
                               torch.rand(8, 8, 3))


def head() -> TalkingHeadSystem:
    system = build(*GPU_RUN).eval()
    system.grid.occupancy.fill_(True)  # every cell marched: the renders compare the fields themselves
    return system


def test_a_model_trained_with_the_triton_kernels_renders_on_a_cpu_with_the_same_weights(tmp_path: Path) -> None:
    system = head()
    path = save(system, tmp_path / "gpu.ckpt", field=on_triton(dict(system.hparams)))
    loaded = load_system(path, "cpu")
    assert loaded.hparams["field"]["encoder"]["backend"] == "torch" and loaded.field.encoder.xy.backend == "torch"
    assert isinstance(loaded.execution, ExecutionEngine) and not loaded.training and loaded.device.type == "cpu"
    for name, value in system.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    got, ref = frame(loaded), frame(system)
    for key in ref:
        assert torch.equal(got[key], ref[key]), key


def test_the_triton_and_torch_hash_grids_share_one_parameter_layout(tmp_path: Path) -> None:
    """What lets a checkpoint change backend without converting its weights (where triton imports, the Triton
    module is built here, on the CPU)."""
    pytest.importorskip("triton")
    system = head()
    on_gpu = TalkingHeadSystem(**{**copy.deepcopy(dict(system.hparams)), "field": on_triton(dict(system.hparams))})
    assert on_gpu.field.encoder.xy.backend == "triton"
    assert {k: v.shape for k, v in on_gpu.state_dict().items()} == {k: v.shape for k, v in system.state_dict().items()}
    on_gpu.load_state_dict(system.state_dict())  # strict: every tensor fits
    path = save(system, tmp_path / "cpu.ckpt")  # the reverse: trained on a CPU, loaded for the Triton kernels
    loaded = load_system(path, "cpu", encoder_backend="triton")
    assert loaded.field.encoder.xy.backend == "triton" and torch.equal(
        loaded.field.encoder.xy.embeddings, system.field.encoder.xy.embeddings)


def test_a_checkpoint_with_the_execution_settings_of_earlier_versions_loads(tmp_path: Path) -> None:
    system = head()
    path = save(system, tmp_path / "old.ckpt", **OLD_EXECUTION_SETTINGS, field=on_triton(dict(system.hparams)))
    loaded = load_system(path, "cpu", engine=ExecutionEngine(eval_chunk=16))
    assert not set(EXECUTION_HPARAMS) & set(loaded.hparams)  # the engine chooses them now
    assert loaded.execution.eval_chunk == 16  # the engine given, not the checkpoint's 4096
    got, ref = frame(loaded), frame(system)
    for key in ref:
        torch.testing.assert_close(got[key], ref[key], rtol=0, atol=1e-6)  # 16-ray chunks: the same rays


def test_a_checkpoint_with_the_retired_marcher_span_option_loads_and_marches_the_box(tmp_path: Path) -> None:
    system = head()
    marcher = {**dict(system.hparams)["marcher"], "span": "box", "probes": 128}
    loaded = load_system(save(system, tmp_path / "span.ckpt", marcher=marcher), "cpu")
    assert "span" not in loaded.hparams["marcher"] and "probes" not in loaded.hparams["marcher"]
    got, ref = frame(loaded), frame(system)
    for key in ref:
        assert torch.equal(got[key], ref[key]), key


def test_what_cannot_load_says_why(tmp_path: Path) -> None:
    system = build()
    with pytest.raises(ErnerfError, match="does not exist"):
        load_system(tmp_path / "missing.ckpt", "cpu")
    tcnn = on_triton(dict(system.hparams))
    tcnn["encoder"]["backend"] = "tcnn"
    with pytest.raises(ErnerfError, match="tiny-cuda-nn"):
        load_system(save(system, tmp_path / "tcnn.ckpt", field=tcnn), "cpu")
    with pytest.raises(ErnerfError, match="encoder_backend must be one of"):
        load_system(save(system, tmp_path / "x.ckpt"), "cpu", encoder_backend="tcnn")
    with pytest.raises(ErnerfError, match="do not fit the model"):
        load_system(save(system, tmp_path / "wider.ckpt", num_frames=11), "cpu")


def test_a_checkpoint_of_another_version_loads_when_its_unknown_options_are_off(tmp_path: Path) -> None:
    """A checkpoint trained by a newer version or a branch records model options this version lacks: off (None),
    they changed nothing and it loads as it is; in use, the error names them instead of a TypeError."""
    system = head()
    loaded = load_system(save(system, tmp_path / "off.ckpt", pose_refinement=None), "cpu")
    assert "pose_refinement" not in loaded.hparams
    got, ref = frame(loaded), frame(system)
    for key in ref:
        assert torch.equal(got[key], ref[key]), key
    with pytest.raises(ErnerfError, match=r"does not have \(pose_refinement\).*git pull"):
        load_system(save(system, tmp_path / "on.ckpt", pose_refinement={"zero_mean": True}), "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_model_trained_on_a_cpu_renders_with_the_triton_kernels_on_a_gpu(tmp_path: Path) -> None:
    system = build().eval()
    path = save(system, tmp_path / "cpu.ckpt", field={**dict(system.hparams)["field"],
                                                      "encoder": {**dict(system.hparams)["field"]["encoder"], "backend": "torch"}})
    loaded = load_system(path, "cuda")
    assert loaded.field.encoder.xy.backend == "triton" and loaded.device.type == "cuda"
    reference = load_system(path, "cuda", engine=ExecutionEngine(tf32=False, render_cuda_graph=False),
                            encoder_backend="torch")
    got, ref = frame(loaded), frame(reference)
    for key in ref:  # Triton's kernels and TF32 against the PyTorch reference in fp32
        torch.testing.assert_close(got[key], ref[key], rtol=1e-2, atol=1e-2)


def test_renders_may_be_loaded_with_fewer_samples_a_ray_than_the_checkpoint_trained_with(tmp_path: Path) -> None:
    system = head()
    path = save(system, tmp_path / "head.ckpt")
    assert load_system(path, "cpu").marcher.render_max_samples is None  # the checkpoint's own: every sample
    capped = load_system(path, "cpu", render_max_samples=1)
    assert capped.marcher.render_max_samples == 1
    full, one = frame(system), frame(capped)
    assert not torch.equal(one["opacity"], full["opacity"]) and (one["opacity"] <= full["opacity"] + 1e-6).all()


@pytest.mark.parametrize("bad", [0, -3, 2.5, "8", True])
def test_a_bad_render_max_samples_says_what_it_takes_before_a_checkpoint_is_read(bad, tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from ernerf.systems.loading import loader_for

    with pytest.raises(ErnerfError, match="render_max_samples must be a whole number"):
        load_system(tmp_path / "missing.ckpt", "cpu", render_max_samples=bad)
    cfg = OmegaConf.create({"engine": {"_target_": "ernerf.engine.ExecutionEngine"}, "encoder_backend": "auto",
                            "render_max_samples": bad})
    with pytest.raises(ErnerfError, match="render_max_samples must be a whole number"):
        loader_for(cfg)
