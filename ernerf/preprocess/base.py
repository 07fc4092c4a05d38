"""The preprocessing step protocol and the runner that makes steps idempotent and resumable."""

from __future__ import annotations

import json
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ernerf.errors import ErnerfError
from ernerf.io.atomic import write_text
from ernerf.io.layout import SubjectLayout

log = logging.getLogger(__name__)


@dataclass
class StepContext:
    """What a step gets besides its own constructor arguments: where the subject lives, the user's inputs."""

    layout: SubjectLayout
    video: Path | None = None  # the user's raw video (only the ingest step reads it)
    audio: Path | None = None  # optional replacement audio track
    warnings: list[str] = field(default_factory=list)

    def warn(self, message: str) -> None:
        """Record a warning for the final summary and log it now."""
        self.warnings.append(message)
        log.warning(message)

    def meta(self) -> dict[str, Any]:
        """The ingest step's facts (fps, number of frames, sizes)."""
        if not self.layout.meta.exists():
            raise ErnerfError(f"{self.layout.meta} is missing: run the ingest step first (preprocess.force=[ingest]).")
        return json.loads(self.layout.meta.read_text())

    @property
    def num_frames(self) -> int:
        return int(self.meta()["num_frames"])


class PreprocessStep(ABC):
    """One stage of preprocessing: reads earlier outputs from disk, writes its own atomically.

    A step is complete when its completion marker exists and all `outputs` exist; the runner then
    skips it. Steps write every output through `ernerf.io.atomic` so a kill leaves no half file.
    """

    name: ClassVar[str]

    @abstractmethod
    def outputs(self, layout: SubjectLayout) -> list[Path]:
        """Files or folders this step produces."""

    @abstractmethod
    def run(self, ctx: StepContext) -> dict[str, Any] | None:
        """Produce the outputs; may return a small dict of facts for the summary (e.g. reprojection error)."""

    def marker(self, layout: SubjectLayout) -> Path:
        return layout.steps_dir / f"{self.name}.json"

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
    """Run each step in order, skipping complete ones unless named in `force`.

    Forcing a step also re-runs every later step, since they read its outputs.
    """
    known = [s.name for s in steps]
    unknown = sorted(set(force) - set(known) - {"all"})
    if unknown:
        raise ErnerfError(f"preprocess.force names unknown steps {unknown}; known steps: {known}")
    forced_from = min((known.index(n) for n in force if n in known), default=len(known))
    if "all" in force:
        forced_from = 0
    reports = []
    for idx, step in enumerate(steps):
        marker = step.marker(ctx.layout)
        if idx < forced_from and step.is_complete(ctx.layout):
            done = json.loads(marker.read_text())
            reports.append(StepReport(step.name, "skipped", 0.0, done.get("facts", {})))
            continue
        if marker.exists():
            marker.unlink()
        log.info("step %s ...", step.name)
        t0 = time.perf_counter()
        facts = step.run(ctx) or {}
        seconds = time.perf_counter() - t0
        missing = [str(p) for p in step.outputs(ctx.layout) if not p.exists()]
        if missing:
            raise RuntimeError(f"step {step.name} finished without writing {missing}")
        write_text(marker, json.dumps({"seconds": seconds, "facts": facts}, indent=2, default=str))
        reports.append(StepReport(step.name, "ran", seconds, facts))
        log.info("step %s done in %.1f s %s", step.name, seconds, facts or "")
    return reports
