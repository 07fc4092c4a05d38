"""Train one stage of a talking head: python train.py stage=head subject=<name> [ckpt_path=last] [debug=fast]."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger("train")


def swept_keys(argv: list[str]) -> set[str]:
    """Keys the command line gives several values (a top-level comma, or range/choice/glob/interval)."""
    keys = set()
    for arg in argv:
        key, _, value = arg.partition("=")
        depth = 0
        for ch in value:
            if ch in "[{(":
                depth += 1
            elif ch in "]})":
                depth -= 1
            elif ch == "," and depth == 0:
                keys.add(key.lstrip("+~"))
        if value.startswith(("range(", "choice(", "glob(", "interval(")):
            keys.add(key.lstrip("+~"))
    return keys


def name_run(cfg: DictConfig) -> None:
    """In a multirun, append the swept overrides to the run name: each job gets its own folder and W&B run."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return
    swept = swept_keys(sys.argv[1:])
    overrides = [o for o in HydraConfig.get().overrides.task if o.partition("=")[0].lstrip("+~") in swept]
    suffix = ",".join(overrides) or HydraConfig.get().job.override_dirname or str(HydraConfig.get().job.num)
    with open_dict(cfg):
        cfg.run_name = f"{cfg.stage.name}-{suffix}"


def stage_steps(cfg: DictConfig, num_train_frames: int) -> int:
    """The stage's step budget: ER-NeRF's recipe scaled to the subject's training frames, unless set explicitly."""
    if cfg.trainer.max_steps and cfg.trainer.max_steps > 0:
        return int(cfg.trainer.max_steps)
    steps = cfg.stage.steps_per_frame * num_train_frames
    return int(min(max(steps, cfg.stage.min_steps), cfg.stage.max_steps))


def resume_path(cfg: DictConfig) -> str | None:
    """`ckpt_path=last` -> <run_dir>/checkpoints/last.ckpt when it exists (else a fresh start)."""
    if cfg.ckpt_path != "last":
        return cfg.ckpt_path
    last = Path(cfg.run_dir) / "checkpoints" / "last.ckpt"
    if not last.exists():
        log.info("no %s yet: starting from scratch", last)
        return None
    return str(last)


def train(cfg: DictConfig) -> dict[str, float]:
    """Build datamodule, system, callbacks, loggers and trainer from config; fit; return the final metrics."""
    name_run(cfg)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.datamodule)
    cfg.trainer.max_steps = max_steps = stage_steps(cfg, datamodule.num_train_frames)  # loss ramps read it
    OmegaConf.resolve(cfg)
    system = instantiate(cfg.model, num_frames=datamodule.num_train_frames)
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    loggers = [instantiate(c) for c in cfg.logger.values() if c is not None] if cfg.get("logger") else False
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    for logger in trainer.loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg))
    log.info("training %s/%s for %d steps in %s", cfg.subject, cfg.run_name, max_steps, cfg.run_dir)
    trainer.fit(system, datamodule=datamodule, ckpt_path=resume_path(cfg))
    trainer.save_checkpoint(Path(cfg.run_dir) / "checkpoints" / "last.ckpt")  # the final state, whatever the interval
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns val/psnr for sweepers."""
    return train(cfg).get("val/psnr")


if __name__ == "__main__":
    main()
