"""The runner's redo of finished steps: dependants only, in a staging copy, all or nothing, finished after a kill."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ernerf.errors import ErnerfError
from ernerf.io.atomic import write_text
from ernerf.io.layout import SubjectLayout
from ernerf.preprocess import staging
from ernerf.preprocess.base import PreprocessStep, StepContext, merged_order, plan_steps, run_steps
from ernerf.preprocess.check import check_dataset
from ernerf.preprocess.pipeline import build_steps
from tests.conftest import compose
from tests.reliability import tree_digest


class _TextStep(PreprocessStep):
    """Writes `<name>.txt`: its name and `version`, then the texts of the steps it reads in brackets."""

    def __init__(self, name: str, requires: tuple[str, ...] | None = None, version: str = "1",
                 fail: bool = False) -> None:
        self.name, self.requires, self.version, self.fail = name, requires, version, fail

    def outputs(self, layout: SubjectLayout) -> list[Path]:
        return [layout.root / f"{self.name}.txt"]

    def run(self, ctx: StepContext) -> dict:
        if self.fail:
            raise ErnerfError(f"step {self.name} failed")
        inputs = "".join((ctx.layout.root / f"{r}.txt").read_text() for r in self.requires or ())
        write_text(ctx.layout.root / f"{self.name}.txt", f"{self.name}{self.version}({inputs})")
        return {}


def _chain(**changes: dict) -> list[_TextStep]:
    """a -> b -> c, and d reading only a; `changes` overrides a step's constructor arguments."""
    spec = {"a": {"requires": ()}, "b": {"requires": ("a",)}, "c": {"requires": ("b",)}, "d": {"requires": ("a",)}}
    return [_TextStep(name, **{**kwargs, **changes.get(name, {})}) for name, kwargs in spec.items()]


@pytest.fixture
def done(tmp_path: Path) -> SubjectLayout:
    """A subject whose four steps all ran."""
    layout = SubjectLayout(tmp_path / "data" / "s")
    layout.root.mkdir(parents=True)
    run_steps(_chain(), StepContext(layout=layout))
    return layout


def test_forcing_a_step_redoes_what_reads_it_and_nothing_else(done: SubjectLayout) -> None:
    assert plan_steps(_chain(), done, force=["b"]) == ["b", "c"]
    assert plan_steps(_chain(), done, force=["a"]) == ["a", "b", "c", "d"]
    (done.root / "d.txt").unlink()  # an output gone: that step is incomplete, nothing reads it
    assert plan_steps(_chain(), done) == ["d"]
    unsaid = [_TextStep("a"), _TextStep("b"), _TextStep("c")]  # no `requires`: every earlier step
    assert plan_steps(unsaid, done, force=["b"]) == ["b", "c"]


def test_a_failed_redo_leaves_the_dataset_exactly_as_it_was(done: SubjectLayout) -> None:
    before = tree_digest(done.root)
    steps = _chain(a={"version": "2"}, c={"fail": True})  # a and b succeed anew, then c fails
    with pytest.raises(ErnerfError, match=f"step c failed.*{done.root} was left as it was"):
        run_steps(steps, StepContext(layout=done), force=["a"])
    assert tree_digest(done.root) == before
    assert not done.staging_dir.exists() and not done.commit_dir.exists()
    check_dataset(done)


def test_a_successful_redo_moves_in_new_files_and_links_the_rest(done: SubjectLayout) -> None:
    untouched = (done.root / "a.txt").stat().st_ino
    reports = run_steps(_chain(b={"version": "2"}), StepContext(layout=done), force=["b"])
    assert [r.status for r in reports] == ["skipped", "ran", "ran", "skipped"]
    assert (done.root / "b.txt").read_text() == "b2(a1())"
    assert (done.root / "c.txt").read_text() == "c1(b2(a1()))"
    assert (done.root / "a.txt").stat().st_ino == untouched  # the original file, not a copy
    assert not done.staging_dir.exists() and not done.commit_dir.exists()
    check_dataset(done)


def test_a_commit_cut_short_is_refused_then_finished_by_the_next_run(done: SubjectLayout,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    moved = []
    real_move = staging._move_in

    def move_one_then_die(src: Path, dst: Path, trash: Path) -> None:
        if moved:
            raise KeyboardInterrupt  # as a kill in the middle of the moves
        moved.append(src.name)
        real_move(src, dst, trash)

    monkeypatch.setattr(staging, "_move_in", move_one_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_steps(_chain(a={"version": "2"}), StepContext(layout=done), force=["a"])
    assert done.commit_dir.exists() and len(moved) == 1
    with pytest.raises(ErnerfError, match="stopped while moving its results in.*python preprocess.py subject=s"):
        check_dataset(done)
    monkeypatch.undo()
    reports = run_steps(_chain(a={"version": "2"}), StepContext(layout=done))
    assert [r.status for r in reports] == ["skipped"] * 4  # the commit finished: nothing left to redo
    assert (done.root / "c.txt").read_text() == "c1(b1(a2()))" and (done.root / "d.txt").read_text() == "d1(a2())"
    assert not done.commit_dir.exists()
    check_dataset(done)


def test_a_killed_staged_run_leaves_a_staging_folder_the_next_run_drops(done: SubjectLayout) -> None:
    before = tree_digest(done.root)
    staged = staging.stage(done)  # what a run killed while staging leaves behind
    (staged.root / "a.txt").unlink()
    write_text(staged.root / "a.txt", "half")
    assert (done.root / "a.txt").read_text() == "a1()"  # the link was replaced, not written through
    check_dataset(done)  # the subject itself is untouched and complete
    staging.recover(done)
    assert tree_digest(done.root) == before


def test_steps_left_out_of_the_config_count_as_reading_every_earlier_step(done: SubjectLayout) -> None:
    run_steps(_chain(b={"version": "2"})[:3], StepContext(layout=done), force=["b"])  # d not configured
    assert merged_order(["a", "b", "c", "d"], ["a", "b", "c"]) == ["a", "b", "c", "d"]
    with pytest.raises(ErnerfError, match="the d step is not done"):
        check_dataset(done)
    run_steps(_chain(b={"version": "2"}), StepContext(layout=done))
    check_dataset(done)


def test_the_real_steps_declare_what_they_read(tmp_path: Path) -> None:
    steps = build_steps(compose("preprocess", ["subject=s"]).preprocess.steps)
    layout = SubjectLayout(tmp_path / "s")
    for step in steps:  # a finished dataset, as far as the runner can tell
        for path in step.outputs(layout):
            if path.suffix:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()
            else:
                path.mkdir(parents=True, exist_ok=True)
        write_text(step.marker(layout), "{}")
    assert plan_steps(steps, layout) == []
    assert plan_steps(steps, layout, force=["audio_features"]) == ["audio_features", "report"]
    assert plan_steps(steps, layout, force=["blink"]) == ["blink", "report"]
    assert plan_steps(steps, layout, force=["parsing"]) == ["parsing", "background", "composite", "matting", "report"]
    everything_but_audio = [s.name for s in steps if s.name not in ("ingest", "audio_features")]
    assert plan_steps(steps, layout, force=["headbox"]) == everything_but_audio
    os.rename(layout.ori_imgs, tmp_path / "elsewhere")  # a deleted crop folder: headbox and all it feeds
    assert plan_steps(steps, layout) == everything_but_audio
