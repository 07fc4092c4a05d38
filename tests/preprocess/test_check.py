"""check_dataset, and which step writes each dataset file (the fix named by every 'cannot read' message)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ernerf.errors import ErnerfError
from ernerf.io.layout import SubjectLayout
from ernerf.preprocess.check import DEFAULT_DATA_ROOT, check_dataset, preprocess_command, redo_hint, writer_step
from ernerf.preprocess.pipeline import build_steps
from tests.conftest import compose



def _error(layout: SubjectLayout) -> str:
    with pytest.raises(ErnerfError) as info:
        check_dataset(layout)
    message = str(info.value)
    assert "\n" not in message and str(layout.root) in message
    return message


def test_a_finished_dataset_and_another_tools_pass(subject: SubjectLayout, tmp_path: Path) -> None:
    check_dataset(subject)
    ernerf_own = SubjectLayout(tmp_path / "ernerf_own")  # ER-NeRF's scripts write no .steps/
    shutil.copytree(subject.root, ernerf_own.root, ignore=shutil.ignore_patterns(".steps"))
    (ernerf_own.root / "mesh.npy").unlink()
    check_dataset(ernerf_own)
    shutil.copytree(subject.steps_dir, ernerf_own.steps_dir)
    with pytest.raises(ErnerfError, match="landmarks step is not done"):
        check_dataset(ernerf_own)  # ...but one of ours with an output gone is not finished


def test_the_first_unfinished_step_and_the_command_finishing_it(subject: SubjectLayout) -> None:
    subject.step_marker("headbox").unlink()
    message = _error(subject)
    assert "the headbox step is not done" in message
    assert f"`python preprocess.py subject=s paths.data_root={subject.root.parent}`" in message
    subject.step_marker("ingest").unlink()
    source = json.loads(subject.meta.read_text())["source"]
    assert f"`python preprocess.py video={source} subject=s paths.data_root=" in _error(subject)


def test_a_marker_whose_outputs_are_gone_is_not_done(subject: SubjectLayout) -> None:
    shutil.rmtree(subject.ori_imgs)
    assert "the headbox step is not done" in _error(subject)


def test_a_half_applied_commit_is_refused(subject: SubjectLayout) -> None:
    subject.commit_dir.mkdir()
    assert "stopped while moving its results in" in _error(subject)


def test_markers_without_a_recorded_order_are_not_judged(subject: SubjectLayout) -> None:
    subject.step_order.unlink()  # made before the runner recorded it: nothing to compare with
    subject.step_marker("landmarks").unlink()
    check_dataset(subject)


def test_every_output_of_every_step_maps_back_to_it(tmp_path: Path) -> None:
    layout = SubjectLayout(tmp_path / "s")
    for step in build_steps(compose("preprocess", ["subject=s"]).preprocess.steps):
        for path in step.outputs(layout):
            assert writer_step(path) == step.name, path
    assert writer_step(layout.ori_img(7)) == "headbox" and writer_step(layout.lms(7)) == "landmarks"
    assert writer_step(layout.gt(7)) == "composite" and writer_step(layout.torso(7)) == "composite"
    assert writer_step(layout.parsing(7)) == "parsing" and writer_step(layout.audio_features("hu")) == "audio_features"
    assert writer_step(layout.root / "notes.txt") is None


def test_commands_name_the_subject_where_it_lives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert compose("preprocess", ["subject=s"]).paths.data_root == DEFAULT_DATA_ROOT
    monkeypatch.chdir(tmp_path)
    assert preprocess_command(SubjectLayout(Path("data/s")), force="parsing") == \
        "python preprocess.py subject=s preprocess.force=[parsing]"
    elsewhere = SubjectLayout(tmp_path / "big" / "s")
    assert redo_hint(elsewhere.gt(3)) == (f"the composite step writes it: run `python preprocess.py subject=s "
                                          f"paths.data_root={tmp_path / 'big'} preprocess.force=[composite]`")
    staged = SubjectLayout(elsewhere.staging_dir / "s")  # a step failing inside a run's staging copy
    assert redo_hint(staged.gt(3)) == redo_hint(elsewhere.gt(3))
    elsewhere.root.mkdir(parents=True)
    elsewhere.meta.write_text(json.dumps({"source": "/clips/a.mp4", "audio_source": "/clips/a.wav"}))
    assert preprocess_command(elsewhere, force="ingest").startswith(
        "python preprocess.py video=/clips/a.mp4 audio=/clips/a.wav subject=s ")
