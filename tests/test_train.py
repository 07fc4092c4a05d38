"""train.py and its configs: every group composes; a tiny run learns; resuming continues the step count."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import CONF_DIR, compose

GROUPS = ["stage", "datamodule", "model", "loss", "trainer", "logger", "callbacks", "debug", "experiment",
          "hparams_search", "ray_guide"]


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_of_every_group_composes_and_resolves(group: str) -> None:
    if group == "hparams_search":
        pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="the `search` extra: pip install -e .[search]")
    options = group_options(group)
    assert options, f"conf/{group}/ is empty"
    for option in options:
        cfg = compose("train", ["subject=someone", f"{group}={option}"])
        OmegaConf.resolve(cfg)
        assert cfg.run_dir == f"runs/someone/{cfg.stage.name}"
        assert cfg.model.feature_dim == cfg.audio_features.feature_dim


def test_default_config_follows_the_er_nerf_head_recipe() -> None:
    cfg = compose("train", ["subject=someone"])
    assert cfg.datamodule.num_rays == 65536 and cfg.datamodule.subject_dir == "data/someone"
    assert list(cfg.model.optimizer.betas) == [0.0, 0.99] and cfg.model.optimizer.eps == 1e-8
    groups = cfg.model.param_groups
    assert groups.grids.lr == 1e-2 and groups.networks.lr == 1e-3
    assert cfg.model.scheduler.final_ratio == 0.5 and cfg.callbacks.occupancy_grid.every_n_steps == 16
    assert cfg.model.audio_kind == "mel" and cfg.datamodule.audio_file == "aud_mel.npy"
    from ernerf.constants import SMOOTH_WINDOW

    assert cfg.model.audio_encoder.smooth_window == SMOOTH_WINDOW  # the net reads the window the data builds
    hubert = compose("train", ["subject=someone", "audio_features=hubert"])
    assert hubert.model.audio_encoder.feature_dim == 1024 and hubert.datamodule.audio_file == "aud_hu.npy"


def test_stage_steps_scale_with_the_subject_length() -> None:
    from ernerf.apps.chain import stage_steps

    cfg = compose("train", ["subject=someone"])
    assert stage_steps(cfg, 250) == cfg.stage.min_steps  # a 10 s clip: the floor
    assert stage_steps(cfg, 3000) == 3000 * cfg.stage.steps_per_frame
    assert stage_steps(cfg, 15000) == cfg.stage.max_steps  # ER-NeRF's 100k cap
    assert stage_steps(compose("train", ["subject=someone", "trainer.max_steps=7"]), 3000) == 7


# ---------------------------------------------------------------- end to end on the synthetic sphere
TINY = [  # a 16 x 16 subject, a small grid and few samples: ~1 s a step on a busy 2-core CPU
    "debug=fast", "datamodule.downscale=1", "datamodule.num_rays=256", "model.marcher.num_samples=8",
    "encoder.num_levels=4", "encoder.log2_hashmap_size=10", "encoder.desired_resolution=64", "model.grid.resolution=16",
]
STEPS = 40


def tiny_config(tmp: Path, steps: int, *extra: str):
    overrides = ["subject=sphere", f"paths.data_root={tmp / 'data'}", f"paths.runs_root={tmp / 'runs'}", *TINY,
                 f"trainer.max_steps={steps}", f"trainer.val_check_interval={STEPS}", *extra]
    return compose("train", overrides)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny head-stage run; returns its run directory."""
    from tests.synthetic import write_synthetic_subject
    from ernerf.apps.train import train

    tmp = tmp_path_factory.mktemp("train")
    write_synthetic_subject(tmp / "data" / "sphere", num_frames=12, size=16)
    train(tiny_config(tmp, STEPS))
    return tmp / "runs" / "sphere" / "head"


def logged(run_dir: Path, key: str) -> list[tuple[int, float]]:
    """(step, value) of one metric from the CSV logger."""
    import csv

    with open(run_dir / "csv" / "metrics.csv") as f:
        return [(int(r["step"]), float(r[key])) for r in csv.DictReader(f) if r.get(key)]


def test_tiny_run_learns_the_subject(trained: Path) -> None:
    psnr = [v for _, v in logged(trained, "train/psnr")]
    assert len(psnr) >= 6
    gain = sum(psnr[-2:]) / 2 - sum(psnr[:2]) / 2
    assert gain > 2.5, f"training PSNR rose only {gain:.2f} dB: {psnr}"
    assert logged(trained, "val/psnr")[-1][1] > 20.0
    assert {"train/loss_rgb_uncertainty", "train/loss_opacity_entropy"} <= set(open(trained / "csv" / "metrics.csv").readline().strip().split(","))


def test_run_writes_checkpoint_val_images_and_refreshes_the_grid(trained: Path) -> None:
    import torch

    ckpt = torch.load(trained / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == STEPS
    assert int(ckpt["state_dict"]["grid.num_updates"]) == 3  # steps 0, 16, 32
    assert ckpt["hyper_parameters"]["audio_kind"] == "mel" and ckpt["hyper_parameters"]["feature_dim"] == 80
    # what inference reads of it (callbacks/checkpoint_facts.py), in plain types
    facts = torch.load(trained / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert facts["stage"] == {"name": "head", "background": "torso", "previous": []}
    assert facts["audio_features"] == {"kind": "mel", "feature_dim": 80, "file": "aud_mel.npy", "extractor": {
        "_target_": "ernerf.audio.features.LogMelExtractor", "n_mels": 80}}
    pngs = sorted((trained / "val_images").glob("*.png"))
    assert pngs and all(p.stat().st_size > 0 for p in pngs)


def test_the_checkpoint_records_the_model_and_not_how_it_ran(trained: Path) -> None:
    """conf/engine/ chooses how steps and renders execute, where a run is built or a checkpoint loaded: none of it is
    saved, neither among the model's hyper-parameters nor as the engine's state."""
    import inspect

    import torch

    from ernerf.engine import ExecutionEngine
    from ernerf.systems.loading import EXECUTION_HPARAMS

    ckpt = torch.load(trained / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    engine_settings = set(inspect.signature(ExecutionEngine).parameters) | set(EXECUTION_HPARAMS)
    assert not engine_settings & set(ckpt["hyper_parameters"]) and "engine" not in ckpt["hyper_parameters"]
    assert not [key for key in ckpt.get("callbacks", {}) if "Engine" in key]
    assert set(ckpt["hyper_parameters"]) >= {"field", "audio_encoder", "marcher", "loss", "num_frames", "aabb"}


def test_checkpoint_restores_a_system_that_renders(trained: Path) -> None:
    import torch

    from ernerf.engine import ExecutionEngine
    from ernerf.systems.loading import load_system

    system = load_system(trained / "checkpoints" / "last.ckpt", "cpu")
    assert system.hparams.audio_kind == "mel" and system.hparams.feature_dim == 80
    assert isinstance(system.execution, ExecutionEngine) and not system.training
    c2w = torch.eye(4)
    c2w[2, 3] = -2.4  # 0.6 m in front of the head, looking down +z
    out = system.render_image(c2w, (17.6, 17.6, 8.0, 8.0), 16, 16, torch.zeros(8, 16, 80), torch.zeros(1), None,
                              torch.full((16, 16, 3), 0.5))
    assert out["rgb"].shape == (16, 16, 3) and out["depth"].shape == out["opacity"].shape == (16, 16)
    assert torch.isfinite(out["rgb"]).all()


def test_ckpt_path_last_resumes_and_continues_the_step_count(trained: Path) -> None:
    import shutil

    import torch

    from ernerf.apps.train import train

    tmp = trained.parents[2] / "resume"
    shutil.copytree(trained.parents[2] / "data", tmp / "data")
    shutil.copytree(trained, tmp / "runs" / "sphere" / "head")
    train(tiny_config(tmp, STEPS + 10, "ckpt_path=last"))
    ckpt = torch.load(tmp / "runs" / "sphere" / "head" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == STEPS + 10
    assert ckpt["lr_schedulers"][0]["last_epoch"] == STEPS + 10  # the decay continued, not restarted
    assert int(ckpt["state_dict"]["grid.num_updates"]) == 4  # one more refresh, before step 48


def test_input_norm_takes_the_training_frames_statistics_into_the_checkpoint(trained: Path) -> None:
    import shutil

    import torch

    from datamodules.subject import parse_subject
    from ernerf.apps.train import train
    from ernerf.systems.loading import load_system

    tmp = trained.parents[2] / "input_norm"
    shutil.copytree(trained.parents[2] / "data", tmp / "data")
    train(tiny_config(tmp, 2, "model.audio_encoder.input_norm=true"))
    ckpt = tmp / "runs" / "sphere" / "head" / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    rows = parse_subject(tmp / "data" / "sphere", "aud_mel.npy").training_audio().reshape(-1, 80).double()
    torch.testing.assert_close(state["audio_encoder.net.input_shift"], rows.mean(0).float())
    torch.testing.assert_close(state["audio_encoder.net.input_scale"], 1 / rows.std(0).clamp_min(1e-2).float())
    loaded = load_system(ckpt, "cpu").audio_encoder.net
    torch.testing.assert_close(loaded.input_shift, state["audio_encoder.net.input_shift"])


@pytest.mark.slow
def test_debug_fast_preset_learns_a_real_clip(prepare_subject, tmp_path: Path) -> None:
    from ernerf.apps.train import train

    root = prepare_subject("train/trump_10s.mp4")
    cfg = compose("train", [f"subject={root.name}", f"paths.data_root={root.parent}", f"paths.runs_root={tmp_path}", "debug=fast"])
    train(cfg)
    run_dir = tmp_path / root.name / "head"
    psnr = [v for _, v in logged(run_dir, "train/psnr")]
    assert sum(psnr[-3:]) / 3 > sum(psnr[:3]) / 3 + 1.0, psnr
    assert (run_dir / "checkpoints" / "last.ckpt").exists() and list((run_dir / "val_images").glob("*.png"))


def test_ema_run_checkpoints_the_average_and_resumes_from_the_weights(tmp_path: Path) -> None:
    """callbacks.ema through train.py: last.ckpt renders with the average, keeps the weights to resume from, and
    the occupancy grid is the trained one in both."""
    import torch

    from tests.synthetic import write_synthetic_subject
    from ernerf.apps.train import train

    write_synthetic_subject(tmp_path / "data" / "sphere", num_frames=12, size=16)
    ema = "callbacks.ema={_target_: callbacks.ema.EMAWeights, decay: 0.8, every_n_steps: 2}"
    train(tiny_config(tmp_path, 12, ema, "trainer.val_check_interval=12"))
    last = tmp_path / "runs" / "sphere" / "head" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    average, current = ckpt["state_dict"], ckpt["ema_current_state"]
    assert average.keys() == current.keys()
    weights = [k for k in average if k.startswith("field.") and average[k].is_floating_point()]
    assert any(not torch.equal(average[k], current[k]) for k in weights)
    assert torch.equal(average["grid.occupancy"], current["grid.occupancy"]) and int(average["grid.num_updates"]) == 1
    train(tiny_config(tmp_path, 16, ema, "trainer.val_check_interval=12", "ckpt_path=last"))
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 16


def test_the_best_checkpoint_is_the_validated_state_ranked_by_its_own_validation(tmp_path: Path) -> None:
    """conf/callbacks/default.yaml saves as each validation ends: the kept checkpoint is the step of the best
    validation, with that validation's figure (a step interval would rank it by the validation before it)."""
    import json

    import torch

    from tests.synthetic import write_synthetic_subject
    from ernerf.apps.train import train

    write_synthetic_subject(tmp_path / "data" / "sphere", num_frames=12, size=16)
    train(tiny_config(tmp_path, 12, "trainer.val_check_interval=4", "callbacks.checkpoint.every_n_train_steps=null"))
    run_dir = tmp_path / "runs" / "sphere" / "head"
    validations = logged(run_dir, "val/psnr")
    assert [step for step, _ in validations] == [3, 7, 11]  # Lightning logs a validation at global_step - 1
    best_step, best_psnr = max(validations, key=lambda sv: sv[1])
    best = json.loads((run_dir / "finished.json").read_text())["best"]
    assert best["step"] == best_step + 1 and best["value"] == pytest.approx(best_psnr, abs=1e-4)
    kept = torch.load(best["path"], map_location="cpu", weights_only=False)
    assert kept["global_step"] == best_step + 1
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == sorted(
        ["last.ckpt", Path(best["path"]).name])


class LevelWeightsSpy(L.Callback):
    """Records the face encoder's level weights after each training step."""

    seen: list[list[float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        LevelWeightsSpy.seen.append(pl_module.field.encoder.level_weights.tolist())


def test_a_level_window_trains_coarse_levels_first_and_ends_with_all_open(tmp_path: Path) -> None:
    from tests.synthetic import write_synthetic_subject
    from ernerf.apps.train import train

    write_synthetic_subject(tmp_path / "data" / "sphere", num_frames=6, size=16)
    LevelWeightsSpy.seen = []
    train(tiny_config(tmp_path, 20, "model.level_window={first:1,until:0.5}", "callbacks.val_images=null",
                      "+callbacks.level_spy._target_=tests.test_train.LevelWeightsSpy"))
    seen = LevelWeightsSpy.seen
    assert len(seen) == 20
    assert seen[0] == [1.0, 0.0, 0.0, 0.0]  # step 0: the coarsest level alone
    assert 0 < seen[5][2] < 1  # a level opening part-way (step 5: 2.5 of the 4 levels)
    assert all(w == [1.0] * 4 for w in seen[10:])  # all open from half-way


class ThreadsSpy(L.Callback):
    """Records torch's thread count at each training step."""

    seen: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        ThreadsSpy.seen.append(torch.get_num_threads())


def test_cpu_threads_hold_while_a_cpu_run_trains_and_are_given_back(tmp_path: Path) -> None:
    from tests.synthetic import write_synthetic_subject
    from ernerf.apps.train import train

    write_synthetic_subject(tmp_path / "data" / "sphere", num_frames=6, size=16)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        ThreadsSpy.seen = []
        train(tiny_config(tmp_path, 4, "cpu_threads=1", "callbacks.val_images=null",
                          "+callbacks.threads_spy._target_=tests.test_train.ThreadsSpy"))
        assert ThreadsSpy.seen == [1] * 4 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert compose("train", ["subject=x", "experiment=demo"]).cpu_threads == 1  # the demo's steps on one thread
    assert compose("train", ["subject=x"]).cpu_threads is None
