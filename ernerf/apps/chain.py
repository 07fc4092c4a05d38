"""Stages as a chain: step budgets (per rank), where a stage starts from, finished markers, and `stage=all` (head ->
lips -> torso)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ernerf.apps.runs import last_checkpoint, offered_checkpoint, read_record
from ernerf.errors import ErnerfError
from ernerf.io.layout import SubjectLayout

log = logging.getLogger(__name__)


def stage_steps(cfg: DictConfig, num_train_frames: int) -> int:
    """The stage's step budget: ER-NeRF's recipe scaled to the subject's training frames, unless set explicitly."""
    if cfg.trainer.max_steps and cfg.trainer.max_steps > 0:
        return int(cfg.trainer.max_steps)
    steps = cfg.stage.steps_per_frame * num_train_frames
    return int(min(max(steps, cfg.stage.min_steps), cfg.stage.max_steps))


def validation_interval(interval: int | float, steps: int, most: int | None) -> int | float:
    """Steps between validations for a run of `steps`: `interval`, widened so that the run validates at most `most`
    times (each validation renders the validation frames and rewrites last.ckpt); a fraction of an epoch, or `most`
    None, stays as given."""
    if most is None or isinstance(interval, float) or steps <= 0:
        return interval
    if most <= 0:
        raise ErnerfError(f"max_validations={most}: give a positive number, or null to validate every "
                          "trainer.val_check_interval steps.")
    return max(int(interval), math.ceil(steps / most))


def per_rank_steps(single_device_steps: int, world_size: int) -> int:
    """Optimizer steps that see as many rays on `world_size` ranks as `single_device_steps` on one device."""
    return single_device_steps if single_device_steps <= 0 else math.ceil(single_device_steps / world_size)


def run_budget(cfg: DictConfig, num_train_frames: int, world_size: int) -> int:
    """Plan the run's steps per rank in `cfg`, once, before anything is built from it; returns them.

    trainer.max_steps becomes the stage's budget for the subject (`stage_steps`), and a literal validation interval
    widens to validate at most `max_validations` times (`validation_interval`). On W > 1 ranks with `divide_steps`,
    that budget, the validation interval and the loss ramps given in steps are each divided by W (rounded up): the
    ranks together see the rays one device would, validate at the same fractions of the run and end the ramps there.
    Values given as interpolations (the head stage's ramps, `${trainer.max_steps}`) follow what they name."""
    cfg.trainer.max_steps = stage_steps(cfg, num_train_frames)
    if not OmegaConf.is_interpolation(cfg.trainer, "val_check_interval"):
        cfg.trainer.val_check_interval = validation_interval(cfg.trainer.val_check_interval, cfg.trainer.max_steps,
                                                             cfg.get("max_validations"))
    if world_size > 1 and cfg.divide_steps:
        for node, key in [(cfg.trainer, "max_steps"), (cfg.trainer, "val_check_interval"),
                          *((cfg.loss.ramps, name) for name in (cfg.loss.get("ramps") or {}))]:
            if not OmegaConf.is_interpolation(node, key) and isinstance(node[key], int):
                node[key] = per_rank_steps(node[key], world_size)
    return int(cfg.trainer.max_steps)


def planned_world_size(trainer_cfg: DictConfig) -> int:
    """The processes a Trainer built from `trainer_cfg` runs (devices per node x nodes), counted as Lightning does."""
    from lightning.pytorch.accelerators import AcceleratorRegistry, CUDAAccelerator

    name = str(trainer_cfg.get("accelerator", "auto"))
    if name == "auto":
        name = "cuda" if CUDAAccelerator.is_available() else "cpu"
    accelerator = AcceleratorRegistry.get("cuda" if name == "gpu" else name)
    devices = trainer_cfg.get("devices", "auto")
    parsed = accelerator.parse_devices(accelerator.auto_device_count() if devices == "auto" else devices)
    return (len(parsed) if isinstance(parsed, list) else int(parsed)) * int(trainer_cfg.get("num_nodes", 1))


def previous_run_dirs(cfg: DictConfig, stage: str) -> list[Path]:
    """Where an earlier stage's run may be: beside this run under its own run name (a sweep's job trains each stage of
    `stage=all` in the sweep folder as `<stage>-<swept values>`), then the subject's `<runs_root>/<subject>/<stage>`."""
    own = Path(cfg.paths.runs_root) / cfg.subject / stage
    name, this_stage = str(cfg.run_name), str(cfg.stage.name)
    beside = Path(cfg.run_dir).parent / (stage + name[len(this_stage):]) if name.startswith(this_stage) else own
    return list(dict.fromkeys([beside, own]))


def initial_checkpoint(cfg: DictConfig) -> str | None:
    """The checkpoint a stage starts from: `init_from=`, else the one offered by the first of `stage.previous` trained
    for this subject (beside this run first: `previous_run_dirs`): its last, or its best if it fell
    (`offered_checkpoint`)."""
    previous = list(cfg.stage.get("previous") or [])
    explicit = cfg.get("init_from") or cfg.model.get("init_from")
    if explicit:
        if not Path(explicit).is_file():
            raise ErnerfError(f"init_from={explicit} does not exist: give the last.ckpt of a trained stage.")
        return str(explicit)
    if not previous:
        return None
    for stage in previous:
        for run_dir in previous_run_dirs(cfg, stage):
            if last_checkpoint(run_dir).is_file():
                offered = offered_checkpoint(run_dir)
                if offered != last_checkpoint(run_dir):
                    log.warning("the %s run in %s fell by its end: %s starts from its best checkpoint, %s", stage,
                                run_dir, cfg.stage.name, offered)
                return str(offered)
    raise ErnerfError(f"stage {cfg.stage.name} starts from a trained {' or '.join(previous)} of subject {cfg.subject!r}, "
                      f"and none is under {Path(cfg.paths.runs_root) / cfg.subject}: run `python train.py stage={previous[-1]} "
                      f"subject={cfg.subject}` first (or give init_from=<checkpoint>, or use stage=all).")


def ensure_dataset(cfg: DictConfig, compose_preprocess: Callable[[], DictConfig]) -> None:
    """With `video=` and no dataset yet, run the preprocessing pipeline (conf/preprocess.yaml) for the subject."""
    layout = SubjectLayout.of(cfg.paths.data_root, cfg.subject)
    if not cfg.get("video") or layout.transforms("train").exists():
        return
    log.info("no dataset at %s: preprocessing %s first", layout.root, cfg.video)
    # here, not at the top: preprocessing needs PyAV and mediapipe, which a training machine may not have
    from ernerf.preprocess.pipeline import preprocess_subject

    preprocess_subject(compose_preprocess().preprocess, layout, video=Path(cfg.video))


def run_chain(cfg: DictConfig, compose_stage: Callable[[str], DictConfig], train_fn: Callable[[DictConfig], dict],
              compose_preprocess: Callable[[], DictConfig] | None = None) -> dict[str, dict | None]:
    """Train every stage of `cfg.stage.chain` in order; stages already finished are skipped (None in the result).
    A stage takes the frames the one before it preloaded where it reads the same (`frames_kept_between_stages`)."""
    from datamodules.frames import frames_kept_between_stages

    if compose_preprocess is not None:
        ensure_dataset(cfg, compose_preprocess)
    with frames_kept_between_stages():
        return train_stages(cfg, compose_stage, train_fn)


def train_stages(cfg: DictConfig, compose_stage: Callable[[str], DictConfig],
                 train_fn: Callable[[DictConfig], dict]) -> dict[str, dict | None]:
    """`run_chain`'s loop over the stages."""
    results: dict[str, dict | None] = {}
    for name in cfg.stage.chain:
        stage_cfg = compose_stage(name)
        record = None if stage_cfg.get("overwrite") else read_record(stage_cfg.run_dir)
        stale = record.stale_init() if record is not None else None
        if record is not None and stale is None:
            log.info("stage %s already finished in %s (%s): skipped", name, stage_cfg.run_dir, record.summary())
            results[name] = None
            continue
        if stale is not None:  # trained from an earlier stage that has been retrained since: train it again
            print(f"stage {name} is retrained: {stale}", flush=True)
            stage_cfg.overwrite = True
        results[name] = train_fn(stage_cfg)
    return results


def stage_overrides(task_overrides: Sequence[str]) -> list[str]:
    """Command-line overrides a chained stage inherits: all but the stage itself and the chain's own keys."""
    own = ("stage", "stage.chain", "video", "init_from")
    return [o for o in task_overrides if o.partition("=")[0].lstrip("+~") not in own]


def preprocess_overrides(task_overrides: Sequence[str]) -> list[str]:
    """Command-line overrides the preprocessing of `stage=all video=...` shares with training."""
    keep = ("subject", "video", "audio_features", "audio")
    keys = [o.partition("=")[0].lstrip("+~") for o in task_overrides]
    return [o for o, key in zip(task_overrides, keys) if key in keep or key.startswith(("paths.", "preprocess."))]
