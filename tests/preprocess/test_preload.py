"""Fixed costs moved off the serial path: the tracker's imports preloaded beside earlier steps, the pool started
before the steps are built."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

from omegaconf import DictConfig

from ernerf.io.layout import SubjectLayout
from ernerf.preprocess import pipeline
from ernerf.preprocess.base import PreprocessStep, StepContext, run_steps
from tests.conftest import compose

REPO = Path(__file__).resolve().parents[2]


class _PreloadingStep(PreprocessStep):
    """Writes `<name>.txt`; its preload records the thread it ran in and waits for the test's signal."""

    def __init__(self, name: str, seen: dict[str, str], release: threading.Event) -> None:
        self.name, self.requires, self.seen, self.release = name, (), seen, release

    def outputs(self, layout: SubjectLayout) -> list[Path]:
        return [layout.root / f"{self.name}.txt"]

    def preload(self) -> None:
        self.seen[self.name] = threading.current_thread().name
        self.release.wait(10)

    def run(self, ctx: StepContext) -> dict:
        (ctx.layout.root / f"{self.name}.txt").write_text(self.name)
        return {}


def test_steps_to_run_are_preloaded_in_a_background_thread_that_does_not_hold_them_up(tmp_path: Path) -> None:
    layout = SubjectLayout(tmp_path / "s")
    layout.root.mkdir()
    done = threading.Event()
    done.set()
    run_steps([_PreloadingStep("a", {}, done)], StepContext(layout=layout))
    seen: dict[str, str] = {}
    held = threading.Event()  # the preload waits for it: the steps must run without waiting for the preload
    reports = run_steps([_PreloadingStep("a", seen, held), _PreloadingStep("b", seen, held)], StepContext(layout=layout))
    held.set()
    for _ in range(200):
        if seen:
            break
        threading.Event().wait(0.05)
    assert [r.status for r in reports] == ["skipped", "ran"]
    assert list(seen) == ["b"] and seen["b"] != threading.main_thread().name


def test_importing_the_tracking_step_leaves_torch_to_its_preload() -> None:
    code = ("import sys; import ernerf.preprocess.tracking as t; before = 'torch' in sys.modules; "
            "t.TrackingStep().preload(); print(before, 'torch._dynamo' in sys.modules, 'roma' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True", "True"]


def test_the_pool_starts_before_the_steps_are_built_when_a_step_is_to_run(tmp_path: Path, monkeypatch) -> None:
    order: list[str] = []
    monkeypatch.setattr(pipeline, "_warm_pool", lambda cfg: order.append("pool"))
    monkeypatch.setattr(pipeline, "build_steps", lambda cfg, first=None: order.append("build") or [first])
    monkeypatch.setattr(pipeline, "run_steps", lambda steps, ctx, force=(): [])
    monkeypatch.setattr(pipeline, "print_summary", lambda *args: None)
    cfg: DictConfig = compose("preprocess", ["subject=test"]).preprocess
    pipeline.preprocess_subject(cfg, SubjectLayout(tmp_path / "s"), video=tmp_path / "clip.mp4")
    assert order == ["pool", "build"]
