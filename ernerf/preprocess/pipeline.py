"""Build the preprocessing steps from config and run them over one subject."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from ernerf.errors import ErnerfError, instantiate_config
from ernerf.io.atomic import remove_stale_temporaries
from ernerf.io.layout import SubjectLayout
from ernerf.io.lock import exclusive_lock
from ernerf.preprocess import staging
from ernerf.preprocess.base import PreprocessStep, StepContext, StepReport, run_steps
from ernerf.preprocess.ingest import check_same_source

log = logging.getLogger(__name__)


def build_steps(steps_cfg: DictConfig, first: PreprocessStep | None = None) -> list[PreprocessStep]:
    """Instantiate every step in config order (`first`, when given, is the first step already built); the config
    key must equal the step's `name`."""
    steps = []
    for index, (key, sub) in enumerate(steps_cfg.items()):
        step = first if index == 0 and first is not None else _instantiate_step(sub)
        if step.name != key:
            raise ValueError(f"config key {key!r} holds step {step.name!r}")
        steps.append(step)
    return steps


def _instantiate_step(sub: DictConfig) -> PreprocessStep:
    """A step from its config; a constructor's ErnerfError (a bad setting) is one line, as every user error."""
    return instantiate_config(sub)


def preprocess_subject(cfg: DictConfig, layout: SubjectLayout, video: Path | None,
                       audio: Path | None = None) -> list[StepReport]:
    """Run the pipeline of `cfg` (the `preprocess` group) for one subject; returns per-step reports.

    Holds the subject's lock throughout: a second run of the same subject is refused and touches nothing.
    The steps after ingest are built once the subject is this run's: their modules import torch (tracking), a second
    that a refused run (no dataset and no video, or a subject in use) does without."""
    ingest = _instantiate_step(next(iter(cfg.steps.values())))
    if video is None and not ingest.is_complete(layout):
        raise ErnerfError(
            f"no dataset at {layout.root} yet and no video given: run "
            f"`python preprocess.py video=<path/to/video.mp4> subject={layout.name}`."
        )
    force = list(cfg.get("force") or [])
    with exclusive_lock(layout.root, f"subject folder {layout.root}"):
        staging.recover(layout)  # what a killed run left: finish its commit, drop its staging copy
        remove_stale_temporaries(layout.root)
        _check_inputs(ingest, layout, video, audio, force)
        # per-frame steps share one process pool: start it as soon as work is certain, so that its workers load
        # their models while this process builds the steps and runs ingest and headbox
        pool_started = bool(force) or _some_marker_missing(cfg.steps, layout)
        if pool_started:
            _warm_pool(cfg)
        steps = build_steps(cfg.steps, first=ingest)
        if not pool_started and not all(step.is_complete(layout) for step in steps):
            _warm_pool(cfg)
        ctx = StepContext(layout=layout, video=Path(video) if video else None, audio=Path(audio) if audio else None,
                          progress=cfg.get("progress", "auto"))
        reports = run_steps(steps, ctx, force=force)
    print_summary(layout, reports, ctx.warnings)
    return reports


def _some_marker_missing(steps_cfg: DictConfig, layout: SubjectLayout) -> bool:
    """Whether a configured step has no completion marker (so it runs), known before the steps are built."""
    return any(not layout.step_marker(name).exists() for name in steps_cfg.keys())


def _warm_pool(cfg: DictConfig) -> None:
    from ernerf.preprocess.segmentation import warm_pool

    warm_pool(int(cfg.get("workers", 1)))


def _check_inputs(ingest: PreprocessStep, layout: SubjectLayout, video: Path | None, audio: Path | None,
                  force: list[str]) -> None:
    """A video= or audio= that this run does not ingest must be the subject's own: another would be ignored."""
    if (video is None and audio is None) or not ingest.is_complete(layout) or {"all", ingest.name} & set(force):
        return
    check_same_source(layout, video, audio)


def print_summary(layout: SubjectLayout, reports: list[StepReport], warnings: list[str]) -> None:
    """A timing table per step, the warnings, and where the dataset and contact sheet are."""
    console = Console()
    table = Table(title=f"preprocess {layout.name}")
    for col in ("step", "status", "seconds", "facts"):
        table.add_column(col)
    for r in reports:
        facts = ", ".join(f"{k}={_fmt(v)}" for k, v in r.facts.items())
        table.add_row(r.name, r.status, f"{r.seconds:.1f}", facts)
    console.print(table)
    for w in warnings:
        console.print(f"[yellow]warning:[/] {w}")
    console.print(f"dataset: {layout.root}")
    if layout.contact_sheet.exists():
        console.print(f"contact sheet: {layout.contact_sheet}   (look at it: crops, landmarks, parsing, poses)")
    console.print(f"next: python train.py subject={layout.name} stage=all   # head, lips and torso in a row",
                  soft_wrap=True, markup=False)


def _fmt(v: object) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)
