"""Data-parallel training: the scaling recipe, the SLURM launcher config, and a real two-rank gloo run of train.py."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
import torch

from callbacks.data_parallel import DataParallelCallback, lr_factor
from ernerf.apps.chain import per_rank_steps, planned_world_size, run_budget
from ernerf.engine.engine import thin_sigterm_broadcast
from ernerf.errors import ErnerfError
from tests.conftest import CONF_DIR, REPO, compose


def digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of named tensors' bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class RankProbe(L.Callback):
    """Test probe added by the DDP run: each rank writes what it trained on and digests of its final state."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir, self.frames, self.first_pixels = Path(out_dir), [], None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self.frames.append(int(batch["frame_index"]))
        self.first_pixels = self.first_pixels or digest({"pixels": batch["pixel_index"]})

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        images = next(c for c in trainer.callbacks if type(c).__name__ == "ValImageLogger")
        record = {
            "world_size": trainer.world_size, "step": trainer.global_step, "frames": self.frames,
            "first_pixels": self.first_pixels, "logged_images_at": images.last_logged_step,
            "weights": digest(dict(pl_module.named_parameters())), "grid": digest(dict(pl_module.grid.named_buffers())),
            "grid_updates": int(pl_module.grid.num_updates), "loss_ramps": pl_module.loss.ramps,
            "lrs": {g["name"]: float(g["lr"]) for g in trainer.optimizers[0].param_groups},  # tensors when captured
        }
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


# ---------------------------------------------------------------- the recipe
def test_lr_factor_follows_the_configured_rule() -> None:
    assert lr_factor("none", 4) == 1.0 and lr_factor("sqrt", 4) == 2.0 and lr_factor("linear", 4) == 4.0
    assert lr_factor("sqrt", 1) == 1.0
    with pytest.raises(ErnerfError, match="lr_scaling"):
        DataParallelCallback(lr_scaling="cubic")


def test_per_rank_steps_keep_the_ray_budget() -> None:
    assert per_rank_steps(100_000, 1) == 100_000 and per_rank_steps(100_000, 8) == 12_500
    assert per_rank_steps(15, 2) == 8  # rounds up: never fewer rays than one device would see
    assert per_rank_steps(-1, 4) == -1  # unlimited stays unlimited


def test_the_budget_per_rank_is_planned_once_before_the_run_is_built() -> None:
    """train.py plans trainer.max_steps, the validation interval and the loss ramps per rank in the config, before
    the system, the callbacks and the trainer are built from it: nothing rewrites them afterwards."""
    from omegaconf import OmegaConf

    cfg = compose("train", ["subject=x", "trainer=ddp_cpu", "trainer.max_steps=16", "trainer.val_check_interval=16",
                            "+loss.ramps.opacity_entropy=10"])
    world = planned_world_size(cfg.trainer)
    assert world == 2 and run_budget(cfg, num_train_frames=300, world_size=world) == 8
    OmegaConf.resolve(cfg)
    assert cfg.trainer.max_steps == 8 and cfg.trainer.val_check_interval == 8
    assert dict(cfg.model.loss.ramps) == {"ambient_audio": 8, "ambient_eye": 8, "opacity_entropy": 5}  # literal: / W
    demo = compose("train", ["subject=x", "experiment=demo", "trainer=ddp_cpu"])  # val_check_interval: max_steps
    run_budget(demo, num_train_frames=300, world_size=2)
    OmegaConf.resolve(demo)
    assert demo.trainer.max_steps == demo.trainer.val_check_interval == 1500
    whole = compose("train", ["subject=x", "trainer=ddp_cpu", "divide_steps=false"])
    assert run_budget(whole, num_train_frames=300, world_size=2) == whole.stage.min_steps  # every rank runs it all
    assert planned_world_size(compose("train", ["subject=x", "trainer=cpu"]).trainer) == 1


def test_a_long_stage_validates_at_most_max_validations_times() -> None:
    from omegaconf import OmegaConf

    torso = compose("train", ["subject=x", "stage=torso", "trainer=cpu"])  # 30 steps a frame, at most 200,000
    assert run_budget(torso, num_train_frames=6818, world_size=1) == 200_000
    OmegaConf.resolve(torso)
    assert torso.trainer.val_check_interval == 10_000  # 200,000 / 20, not every 2,000 steps
    assert torso.callbacks.last_checkpoint.every_n_train_steps == 10_000  # last.ckpt follows
    short = compose("train", ["subject=x", "stage=head", "trainer=cpu"])
    assert run_budget(short, num_train_frames=227, world_size=1) == 10_000
    assert short.trainer.val_check_interval == 2000  # 5 validations: as given
    every = compose("train", ["subject=x", "stage=head", "trainer=cpu", "max_validations=null"])
    run_budget(every, num_train_frames=6818, world_size=1)
    assert every.trainer.max_steps == 100_000 and every.trainer.val_check_interval == 2000
    ddp = compose("train", ["subject=x", "stage=torso", "trainer=ddp_cpu"])
    assert run_budget(ddp, num_train_frames=6818, world_size=2) == 100_000
    assert ddp.trainer.val_check_interval == 5000  # widened for the whole budget, then divided as the steps are
    wrong = compose("train", ["subject=x", "trainer=cpu", "max_validations=0"])
    with pytest.raises(ErnerfError, match="max_validations=0"):
        run_budget(wrong, num_train_frames=6818, world_size=1)


def test_lr_scaling_survives_the_scheduler() -> None:
    from ernerf.systems.talking_head import exponential_decay

    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([{"params": [param], "lr": 1e-2}])
    scheduler = exponential_decay(optimizer, total_steps=10, final_ratio=0.5)
    trainer = SimpleNamespace(world_size=4, optimizers=[optimizer], lr_scheduler_configs=[SimpleNamespace(scheduler=scheduler)])
    DataParallelCallback(lr_scaling="sqrt").on_fit_start(trainer, None)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(2e-2)
    for _ in range(10):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-2)  # 2e-2 decayed to half, not reset to 1e-2 * 0.5


def test_sigterm_broadcast_runs_once_every_n_steps() -> None:
    """Lightning's per-step SIGTERM broadcast (two host syncs) is thinned to one step in n, the same steps on every
    rank. The hook is private: if a Lightning upgrade renames it, this test says so (the thinning would be lost)."""
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    loop = trainer.fit_loop.epoch_loop
    assert callable(getattr(loop, "_broadcast_sigterm_tensor", None))
    calls = []
    loop._broadcast_sigterm_tensor = lambda: calls.append(1)
    assert thin_sigterm_broadcast(trainer, every_n_steps=5)
    assert not thin_sigterm_broadcast(trainer, every_n_steps=5)  # a second fit: already thinned, once
    for _ in range(12):
        loop._broadcast_sigterm_tensor()
    assert len(calls) == 3  # steps 0, 5 and 10
    assert not thin_sigterm_broadcast(trainer, every_n_steps=1)  # 1: Lightning's own behaviour, untouched


def test_slurm_launcher_runs_one_task_per_gpu_on_every_node() -> None:
    from hydra import compose, initialize_config_dir

    overrides = ["subject=someone", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2", "hydra/launcher=slurm",
                 "hydra.launcher.partition=gpu"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides, return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.nodes) == (4, 4, 2)
    assert launcher.partition == "gpu" and launcher.max_num_timeout > 0
    assert cfg.trainer.strategy.process_group_backend == "nccl"


# ---------------------------------------------------------------- two gloo ranks through train.py
@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny two-rank run: 16 single-device steps -> 8 per rank, grid refreshed every 3 steps, validation at the end."""
    tmp = tmp_path_factory.mktemp("ddp")
    train_two_ranks(tmp, "trainer=ddp_cpu", "trainer.max_steps=16", "trainer.val_check_interval=16",
                    "callbacks.occupancy_grid.every_n_steps=3")
    return tmp


def train_two_ranks(tmp: Path, *overrides: str) -> str:
    """train.py on a tiny synthetic subject with two ranks and the RankProbe; returns its output (the log)."""
    from tests.synthetic import write_synthetic_subject
    from tests.test_train import TINY

    write_synthetic_subject(tmp / "data" / "sphere", num_frames=12, size=16)
    cmd = [sys.executable, "train.py", "subject=sphere", f"paths.data_root={tmp / 'data'}", f"paths.runs_root={tmp / 'runs'}",
           *TINY, "trainer.log_every_n_steps=1", *overrides,
           "+callbacks.probe._target_=tests.test_ddp.RankProbe", f"+callbacks.probe.out_dir={tmp / 'probe'}"]
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)  # keep what the caller adds
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout + done.stderr


def ranks(tmp: Path) -> list[dict]:
    return [json.loads((tmp / "probe" / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_ranks_end_with_identical_weights_and_occupancy_grids(ddp_run: Path) -> None:
    rank0, rank1 = ranks(ddp_run)
    assert rank0["world_size"] == rank1["world_size"] == 2
    assert rank0["step"] == rank1["step"] == 8  # 16 single-device steps of rays, over two ranks
    assert rank0["weights"] == rank1["weights"]
    assert rank0["grid_updates"] == rank1["grid_updates"] == 3  # steps 0, 3, 6
    assert rank0["grid"] == rank1["grid"]  # the ranks' own refreshes jitter differently: the broadcast made them equal


def test_each_rank_samples_its_own_frames_and_rays(ddp_run: Path) -> None:
    rank0, rank1 = ranks(ddp_run)
    assert not set(rank0["frames"][:5]) & set(rank1["frames"][:5])  # one epoch of 10 frames, split between ranks
    assert rank0["first_pixels"] != rank1["first_pixels"]


def test_learning_rates_grow_by_the_square_root_of_the_world_size(ddp_run: Path) -> None:
    rank0, rank1 = ranks(ddp_run)
    decay = 0.5 ** (8 / 8)  # the head stage's lr halves over the (divided) run
    assert rank0["lrs"]["grids"] == pytest.approx(1e-2 * math.sqrt(2) * decay)
    assert rank0["lrs"] == rank1["lrs"]


def test_loss_ramps_end_at_the_same_fraction_of_the_divided_run(ddp_run: Path) -> None:
    """The head stage's ambient losses ramp in over the whole stage: 16 single-device steps, so 8 per rank."""
    rank0, rank1 = ranks(ddp_run)
    assert rank0["loss_ramps"] == rank1["loss_ramps"] == {"ambient_audio": 8, "ambient_eye": 8}


def test_one_checkpoint_one_metrics_file_and_images_from_rank_zero_only(ddp_run: Path) -> None:
    import csv

    run_dir = ddp_run / "runs" / "sphere" / "head"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.ckpt"]
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 8
    assert [p.relative_to(run_dir).as_posix() for p in run_dir.rglob("metrics.csv")] == ["csv/metrics.csv"]
    with open(run_dir / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    steps = [int(r["step"]) for r in rows if r.get("train/loss")]
    assert steps == sorted(set(steps)) and len(steps) == 8  # every step once: only rank 0 wrote
    assert len([r for r in rows if r.get("val/psnr")]) == 1
    rank0, rank1 = ranks(ddp_run)
    assert rank0["logged_images_at"] == 8 and rank1["logged_images_at"] is None
    assert len(list((run_dir / "val_images").glob("*.png"))) == 1  # rank 0's one of the two validation frames


def test_the_gpu_ddp_strategy_takes_only_arguments_every_supported_torch_accepts() -> None:
    """trainer=ddp's DistributedDataParallel options: torch 2.11 (the GPU image) rejected forward_sync_buffers."""
    import inspect

    from omegaconf import OmegaConf
    from torch.nn.parallel import DistributedDataParallel

    strategy = OmegaConf.load(Path(__file__).parents[1] / "conf" / "trainer" / "ddp.yaml").strategy
    lightning_args = {"_target_", "process_group_backend"}  # the rest go to DistributedDataParallel
    ddp_args = set(strategy) - lightning_args
    assert ddp_args <= set(inspect.signature(DistributedDataParallel.__init__).parameters)
    assert "forward_sync_buffers" not in ddp_args  # added in torch 2.13; the requirement allows 2.11


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_two_gpus_replaying_graphs_end_identical(tmp_path: Path) -> None:
    """trainer=ddp on two GPUs with the step as CUDA graphs: the gradients' all-reduce after each replay is the only
    thing keeping the ranks together, so identical weights prove it ran."""
    log = train_two_ranks(tmp_path, "trainer=ddp", "trainer.devices=2", "trainer.max_steps=64",
                          "trainer.val_check_interval=64", "callbacks.occupancy_grid.every_n_steps=8",
                          "engine.compile_field=false")
    assert "training step as CUDA graphs" in log
    rank0, rank1 = ranks(tmp_path)
    assert rank0["world_size"] == rank1["world_size"] == 2 and rank0["step"] == rank1["step"] == 32
    assert rank0["first_pixels"] != rank1["first_pixels"]  # different rays, so different local gradients
    assert rank0["weights"] == rank1["weights"]
    assert rank0["grid"] == rank1["grid"]
