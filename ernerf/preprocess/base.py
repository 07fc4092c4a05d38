"""The preprocessing step protocol and the runner that makes steps idempotent and resumable."""

from __future__ import annotations

import json
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

from tqdm import tqdm

from ernerf.errors import ErnerfError
from ernerf.io.atomic import write_text
from ernerf.io.layout import SubjectLayout
from ernerf.preprocess import staging
from ernerf.preprocess.check import recorded_order, redo_hint
from ernerf.progress import Enabled, progress_bar

log = logging.getLogger(__name__)


@dataclass
class StepContext:
    """What a step gets besides its own constructor arguments: where the subject lives, the user's inputs."""

    layout: SubjectLayout
    video: Path | None = None  # the user's raw video (only the ingest step reads it)
    audio: Path | None = None  # optional replacement audio track
    warnings: list[str] = field(default_factory=list)
    progress: Enabled = "auto"  # progress bars: "auto" (on a terminal), True, False
    step: str = ""  # the step running now (its bar's label)

    def warn(self, message: str) -> None:
        """Record a warning for the final summary and log it now."""
        self.warnings.append(message)
        log.warning(message)

    def meta(self) -> dict[str, Any]:
        """The ingest step's facts (fps, number of frames, sizes)."""
        if not self.layout.meta.exists():
            raise ErnerfError(f"{self.layout.meta} is missing: {redo_hint(self.layout.meta)}.")
        return json.loads(self.layout.meta.read_text())

    @property
    def num_frames(self) -> int:
        return int(self.meta()["num_frames"])

    def bar(self, total: int, unit: str = "frame") -> tqdm:
        """A progress bar (rate, ETA) for the running step's work of `total` units: `with ctx.bar(n) as bar:`."""
        return progress_bar(total, self.step, unit, self.progress)


class PreprocessStep(ABC):
    """One stage of preprocessing: reads earlier outputs from disk, writes its own atomically.

    A step is complete when its completion marker exists and all `outputs` exist; the runner then
    skips it. Steps write every output through `ernerf.io.atomic` (a new file renamed into place, never
    an existing file rewritten): a kill leaves no half file, and a staged redo leaves the originals intact.
    """

    name: ClassVar[str]
    requires: ClassVar[tuple[str, ...] | None] = None  # steps whose outputs run() reads; None: every earlier step

    @abstractmethod
    def outputs(self, layout: SubjectLayout) -> list[Path]:
        """Files or folders this step produces."""

    @abstractmethod
    def run(self, ctx: StepContext) -> dict[str, Any] | None:
        """Produce the outputs; may return a small dict of facts for the summary (e.g. reprojection error)."""

    def preload(self) -> None:
        """Import the heavy modules `run` needs. The runner calls it in a background thread before the first step,
        so that the imports use a core the earlier steps leave idle instead of adding to this step's time."""

    def marker(self, layout: SubjectLayout) -> Path:
        return layout.step_marker(self.name)

    def is_complete(self, layout: SubjectLayout) -> bool:
        return self.marker(layout).exists() and all(p.exists() for p in self.outputs(layout))


@dataclass
class StepReport:
    """Timing and facts of one step in one run."""

    name: str
    status: str  # "ran" | "skipped"
    seconds: float
    facts: dict[str, Any]


def run_steps(steps: Sequence[PreprocessStep], ctx: StepContext, force: Sequence[str] = ()) -> list[StepReport]:
    """Run the steps that are incomplete or named in `force`, and every step that reads their outputs.

    When that redoes a finished step, the run works in a staging copy of the subject whose results move
    in only once every step succeeded (see staging.py): a failure leaves the dataset as it was. The caller
    holds the subject's lock.
    """
    layout = ctx.layout
    staging.recover(layout)
    todo = plan_steps(steps, layout, force)
    preload_in_background([s for s in steps if s.name in todo])
    order = merged_order(recorded_order(layout), [s.name for s in steps])
    redo = _invalidated(order, todo, [s.name for s in steps])
    staged = any(layout.step_marker(name).exists() for name in redo)
    work = replace(ctx, layout=staging.stage(layout)) if staged else ctx
    try:
        _reset_markers(work.layout, redo, order)
        reports = [_run_step(s, work) if s.name in todo else _skipped(s, layout) for s in steps]
        if staged:
            staging.commit(layout)
    except ErnerfError as exc:
        if not staged:
            raise
        staging.discard(layout)
        raise ErnerfError(f"{exc} ({layout.root} was left as it was before this run.)") from exc
    except BaseException:
        if staged:
            staging.discard(layout)
        raise
    return reports


def preload_in_background(steps: Sequence[PreprocessStep]) -> threading.Thread:
    """Call each step's `preload` in a daemon thread. A module it fails to import is not an error here: the step
    imports it again when it runs, and reports the failure there."""

    def preload() -> None:
        for step in steps:
            try:
                step.preload()
            except Exception as exc:  # noqa: BLE001 - reported by the step's own import
                log.debug("preloading step %s failed: %s", step.name, exc)

    thread = threading.Thread(target=preload, name="preload-steps", daemon=True)
    thread.start()
    return thread


def plan_steps(steps: Sequence[PreprocessStep], layout: SubjectLayout, force: Sequence[str] = ()) -> list[str]:
    """Names of the steps to run, in order: forced or incomplete ones, and every step reading their outputs."""
    names = [s.name for s in steps]
    unknown = sorted(set(force) - set(names) - {"all"})
    if unknown:
        raise ErnerfError(f"preprocess.force names unknown steps {unknown}; known steps: {names}")
    todo = set(names) if "all" in force else set(force)
    todo |= {s.name for s in steps if not s.is_complete(layout)}
    for i, step in enumerate(steps):
        if todo.intersection(_requirements(step, names, i)):
            todo.add(step.name)
    return [n for n in names if n in todo]


def _requirements(step: PreprocessStep, names: list[str], index: int) -> list[str]:
    """The configured steps whose outputs `step` reads; all of them must come before it."""
    if step.requires is None:
        return names[:index]
    late = [r for r in step.requires if r in names[index:]]
    if late:
        raise ErnerfError(f"preprocess step {step.name} reads the outputs of {late}, which the config runs after it: "
                          "keep the step order of conf/preprocess/default.yaml.")
    return [r for r in step.requires if r in names]


def merged_order(recorded: Sequence[str], names: Sequence[str]) -> list[str]:
    """The configured steps, plus steps an earlier run recorded that this config leaves out, in their place."""
    order = list(names)
    for i, name in enumerate(recorded):
        if name not in order:
            order.insert(max((order.index(r) + 1 for r in recorded[:i] if r in order), default=0), name)
    return order


def _invalidated(order: list[str], todo: list[str], configured: list[str]) -> list[str]:
    """Markers to drop before running: the steps to redo, and left-out steps after the first of them
    (not configured, so what they read is unknown)."""
    if not todo:
        return []
    first = order.index(todo[0])
    return [n for i, n in enumerate(order) if n in todo or (n not in configured and i > first)]


def _reset_markers(layout: SubjectLayout, redo: list[str], order: list[str]) -> None:
    """Mark the steps about to be redone not done, and record the step order for check_dataset."""
    for name in redo:
        layout.step_marker(name).unlink(missing_ok=True)
    if recorded_order(layout) != order:
        write_text(layout.step_order, json.dumps({"steps": order}))


def _run_step(step: PreprocessStep, ctx: StepContext) -> StepReport:
    """Run one step and write its marker (with its outputs, so a check needs no config)."""
    log.info("step %s ...", step.name)
    ctx.step = step.name
    t0 = time.perf_counter()
    facts = step.run(ctx) or {}
    seconds = time.perf_counter() - t0
    outputs = step.outputs(ctx.layout)
    missing = [str(p) for p in outputs if not p.exists()]
    if missing:
        raise RuntimeError(f"step {step.name} finished without writing {missing}")
    record = {"seconds": seconds, "facts": facts, "outputs": [str(p.relative_to(ctx.layout.root)) for p in outputs]}
    write_text(step.marker(ctx.layout), json.dumps(record, indent=2, default=str))
    log.info("step %s done in %.1f s %s", step.name, seconds, facts or "")
    return StepReport(step.name, "ran", seconds, facts)


def _skipped(step: PreprocessStep, layout: SubjectLayout) -> StepReport:
    done = json.loads(step.marker(layout).read_text())
    return StepReport(step.name, "skipped", 0.0, done.get("facts", {}))
