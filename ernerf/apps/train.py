"""Training as `python train.py` runs it: one stage in its own run folder, or the chain of `stage=all`."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.accelerators import CPUAccelerator
from omegaconf import DictConfig, OmegaConf

from ernerf.apps.chain import (initial_checkpoint, planned_world_size, preprocess_overrides, run_budget, run_chain,
                               stage_overrides)
from ernerf.apps.next_steps import fall_headline, finished_summary
from ernerf.apps.runs import (launched_rank, mark_finished, peek_checkpoint, prepare_run_folder, read_record,
                             run_folder_lock, validate_max_steps)
from ernerf.apps.sweeps import label_run, rerun_arguments
from ernerf.errors import ErnerfError
from ernerf.io.layout import check_subject_name
from ernerf.threads import torch_threads

log = logging.getLogger("train")


class _WithoutAdverts(logging.Filter):
    """Drops Lightning's advertisement for its cloud logger, printed at every fit."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


_ADVERTS = _WithoutAdverts()


def quiet_library_noise() -> None:
    """Keep what libraries print at every run and a user can do nothing about off the terminal."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_ADVERTS)  # once, however often called
    # Lightning's pytree helper calls an API that this torch deprecates; nothing here uses it
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


def train(cfg: DictConfig) -> dict[str, float]:
    """Train one stage in its run folder, which no other run may use meanwhile; return the final metrics."""
    label_run(cfg)
    with run_folder_lock(cfg.run_dir):
        return fit_stage(cfg)


def fit_stage(cfg: DictConfig) -> dict[str, float]:
    """Build datamodule, system, callbacks, loggers and trainer from config; fit; return the final metrics."""
    check_subject_name(cfg.subject)
    validate_max_steps(cfg.trainer.max_steps)
    quiet_library_noise()
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.datamodule)
    world_size = planned_world_size(cfg.trainer)
    max_steps = run_budget(cfg, datamodule.num_train_frames, world_size)  # per rank; loss ramps and validation follow
    cfg.model.init_from = initial_checkpoint(cfg)  # lips and torso start from the previous stage
    resume = prepare_run_folder(cfg.run_dir, cfg.subject, cfg.stage.name, cfg.ckpt_path, max_steps,
                                cfg.get("overwrite", False), rerun_arguments())
    OmegaConf.resolve(cfg)
    system = instantiate(cfg.model, num_frames=datamodule.num_train_frames)
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    engine = instantiate(cfg.engine)  # how the steps execute: beside the system, not in its checkpoint
    loggers = [instantiate(c) for c in cfg.logger.values() if c is not None] if cfg.get("logger") else False
    trainer = instantiate(cfg.trainer, callbacks=[*callbacks, engine], logger=loggers)
    if trainer.world_size != world_size:
        raise ErnerfError(f"the run was planned for {world_size} process(es) but the trainer runs {trainer.world_size}: "
                          "give trainer.devices and trainer.num_nodes explicitly.")
    for logger in trainer.loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg))
    log.info("training %s/%s for %d steps (per rank, %d rank(s)), validating every %s, in %s", cfg.subject,
             cfg.run_name, max_steps, world_size, cfg.trainer.val_check_interval, cfg.run_dir)
    with torch_threads(cfg.get("cpu_threads") if isinstance(trainer.accelerator, CPUAccelerator) else None):
        trainer.fit(system, datamodule=datamodule, ckpt_path=resume)
    trainer.save_checkpoint(Path(cfg.run_dir) / "checkpoints" / "last.ckpt")  # the final state, whatever the interval
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    mark_finished(cfg.run_dir, trainer.global_step, metrics, cfg.model.init_from, best_saved(trainer),
                  bool(cfg.stage.get("offer_best_if_fell", True)))
    return metrics


def best_saved(trainer: Any) -> dict[str, Any] | None:
    """The checkpoint the run's ModelCheckpoint kept as its best (path, step, monitored figure); None: none kept."""
    kept = trainer.checkpoint_callback
    if kept is None or not kept.best_model_path or kept.best_model_score is None:
        return None
    step = (peek_checkpoint(kept.best_model_path) or {}).get("global_step")
    return {"path": str(kept.best_model_path), "step": step, "monitor": kept.monitor,
            "value": float(kept.best_model_score)}


def train_command(cfg: DictConfig) -> float | None:
    """What `python train.py` does with its config; returns `optimized_metric` (val/psnr) for sweepers (of the last
    stage trained, for stage=all). The chain composes each stage's config from the running Hydra app's command line."""
    metric = cfg.get("optimized_metric") or "val/psnr"
    if not cfg.stage.get("chain"):
        metrics = train(cfg)
        print_summary(cfg.subject, cfg.stage.name, Path(cfg.run_dir), cfg.stage.get("next") or ())
        return metrics.get(metric)
    # as typed: read through the config, an interpolation in an override (`${run_dir}`) would resolve in the chain's
    # config (run_dir .../all) instead of each stage's
    task = OmegaConf.to_container(HydraConfig.get().overrides.task, resolve=False)
    composed: dict[str, DictConfig] = {}

    def compose_stage(name: str) -> DictConfig:
        stage_cfg = hydra.compose("train", [*stage_overrides(task), f"stage={name}"])
        label_run(stage_cfg)  # in a sweep, the stage's folder is the job's own: where the chain looks for it
        composed[name] = stage_cfg
        return stage_cfg

    def train_and_tell(stage_cfg: DictConfig) -> dict[str, float]:
        metrics = train(stage_cfg)
        warn_if_fell(stage_cfg.subject, Path(stage_cfg.run_dir), metrics)  # at once: the next stage starts from it
        return metrics

    results = run_chain(cfg, compose_stage, train_and_tell,
                        lambda: hydra.compose("preprocess", preprocess_overrides(task)))
    last = list(results)[-1]
    print_summary(cfg.subject, last, Path(composed[last].run_dir), ())
    return next((r.get(metric) for r in reversed(list(results.values())) if r), None)


def warn_if_fell(subject: str, run_dir: Path, metrics: dict[str, float]) -> None:
    """One log line when a stage of a chain ended FALL_DB or more under its best kept checkpoint (`fall_headline`),
    which what follows the stage takes instead of its last."""
    record = read_record(run_dir)
    headline = fall_headline(metrics, record.best if record else None, record.offers_best if record else True)
    if headline:
        log.warning("%s: later stages, infer.py and evaluate.py take that one, %s", headline, record.best["path"])


def print_summary(subject: str, stage: str, run_dir: Path, next_stages: Sequence[str]) -> None:
    """Print what the finished stage scored, where its files are and what to run next (rank 0 only)."""
    record = read_record(run_dir)
    if record is None or launched_rank():
        return
    print(finished_summary(subject, stage, run_dir, record.step, record.metrics, next_stages, record.best,
                           record.offers_best), flush=True)
