"""Never lose a user's work: failed, refused, killed and concurrent runs of preprocess.py, on real subjects."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest

from ernerf.errors import ErnerfError
from ernerf.io.layout import SubjectLayout
from ernerf.io.lock import exclusive_lock
from ernerf.preprocess.check import check_dataset, redo_hint
from tests.conftest import REPO, compose, shared_clip
from tests.reliability import assert_user_error, dead_pid, run_entry_point, tree_digest

TRUMP = "train/trump_10s.mp4"


def steps_after(upto: str) -> list[str]:
    """Overrides leaving out the steps after `upto` (the cached subjects are made up to a step)."""
    names = list(compose("preprocess", ["subject=s"]).preprocess.steps)
    return [f"~preprocess.steps.{n}" for n in names[names.index(upto) + 1:]]


def preprocess(layout: SubjectLayout, *overrides: str) -> subprocess.CompletedProcess:
    """`python preprocess.py` on `layout`, up to the landmarks step, one process."""
    return run_entry_point(REPO, "preprocess.py", f"subject={layout.name}", f"paths.data_root={layout.root.parent}",
                           "preprocess.workers=1", *steps_after("landmarks"), *overrides)


def _corrupt_video(tmp_path: Path) -> Path:
    data = bytearray(shared_clip(TRUMP).read_bytes())
    data[:4096] = bytes(4096)
    path = tmp_path / "corrupt.mp4"
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(("make_video", "failure"), [
    (lambda tmp: shared_clip("edge/tiny_face_full_body.mp4"), "the face is too small"),  # ingests, fails at headbox
    (_corrupt_video, "corrupt"),  # fails in ingest itself
], ids=["no-usable-face", "corrupt"])
def test_a_forced_redo_from_a_bad_video_leaves_the_dataset_as_it_was(subject: SubjectLayout, tmp_path: Path,
                                                                      make_video, failure: str) -> None:
    before = tree_digest(subject.root)
    proc = preprocess(subject, f"video={make_video(tmp_path)}", "preprocess.force=[ingest]")
    assert_user_error(proc, failure, f"{subject.root} was left as it was")
    assert tree_digest(subject.root) == before
    check_dataset(subject)  # complete and consistent: training can go on with it


def test_another_video_is_refused_and_the_same_one_elsewhere_resumes(subject: SubjectLayout, tmp_path: Path) -> None:
    before = tree_digest(subject.root)
    other = shared_clip("train/hdtf_aoc_8s.mp4")
    proc = preprocess(subject, f"video={other}")
    assert_user_error(proc, str(shared_clip(TRUMP)), f"video={other}", "subject=<name>", "preprocess.force=[ingest]")
    assert tree_digest(subject.root) == before
    moved = tmp_path / "moved" / "speech.mp4"
    moved.parent.mkdir()
    shutil.copyfile(shared_clip(TRUMP), moved)
    proc = preprocess(subject, f"video={moved}")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("skipped") == 3 and " ran " not in proc.stdout
    assert tree_digest(subject.root) == before


def test_a_second_run_of_the_same_subject_is_refused_and_touches_nothing(subject: SubjectLayout) -> None:
    before = tree_digest(subject.root)
    with exclusive_lock(subject.root, "subject s"):  # as the first run holds it
        proc = preprocess(subject, "preprocess.force=[headbox]")
    assert_user_error(proc, "is in use by another run", f"pid {os.getpid()}")
    assert tree_digest(subject.root) == before


def test_temporaries_of_a_killed_run_are_removed_by_the_next_run(subject: SubjectLayout) -> None:
    before = tree_digest(subject.root)
    dead = dead_pid()
    stale = [subject.root / f".tmp.{dead}.mesh.npy", subject.ori_imgs / f".tmp.{dead}.3.lms",
             subject.root / f".tmp.{dead}.gt_imgs" / "0.jpg"]
    for path in stale:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"half written")
    live = subject.root / f".tmp.{os.getpid()}.audio.wav"  # a writer still at work
    live.write_bytes(b"being written")
    proc = preprocess(subject)
    assert proc.returncode == 0, proc.stderr
    assert not any(p.exists() for p in stale) and not stale[-1].parent.exists()
    assert live.exists()
    live.unlink()
    assert tree_digest(subject.root) == before


def _pool_workers(parent: int) -> list[int]:
    """Pids of the multiprocessing children of `parent` (from /proc: psutil is not a dependency)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if entry.name.isdigit() and int(stat.rsplit(")", 1)[1].split()[1]) == parent and b"multiprocessing" in cmdline:
            found.append(int(entry.name))
    return found


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds processes through /proc")
def test_a_killed_run_takes_its_workers_along_and_leaves_the_dataset_as_it_was(subject: SubjectLayout) -> None:
    before = tree_digest(subject.root)
    run = subprocess.Popen([sys.executable, "preprocess.py", "subject=s", f"paths.data_root={subject.root.parent}",
                            "preprocess.workers=2", "preprocess.force=[headbox]", *steps_after("landmarks")],
                           cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    workers: list[int] = []
    while run.poll() is None and time.monotonic() < deadline:
        workers = _pool_workers(run.pid)
        if len(workers) >= 2 and subject.staging_dir.exists():
            break
        time.sleep(0.05)
    assert run.poll() is None and len(workers) >= 2 and subject.staging_dir.exists(), "the run ended too early"
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    deadline = time.monotonic() + 5
    while any(_running(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [w for w in workers if _running(w)]
    check_dataset(subject)  # the kill hit the staging copy: the dataset itself is whole
    assert {k: v for k, v in tree_digest(subject.root).items() if not k.startswith(".staging/")} == before
    proc = preprocess(subject)
    assert proc.returncode == 0, proc.stderr
    assert tree_digest(subject.root) == before  # the next run dropped the staging copy


def test_an_unreadable_training_image_names_its_step_and_the_exact_fix(tmp_path: Path) -> None:
    from datamodules.subject import FrameStore, parse_subject
    from tests.synthetic import write_synthetic_subject

    root = write_synthetic_subject(tmp_path / "data" / "sphere", num_frames=6, size=32)
    layout = SubjectLayout(root)
    layout.gt(3).write_bytes(b"\xff\xd8 not a whole jpeg")
    with pytest.raises(ErnerfError) as info:
        FrameStore(parse_subject(root, "aud_mel.npy"), preload=True)
    assert str(info.value) == (f"cannot read {layout.gt(3)}: the composite step writes it: run `python preprocess.py "
                               f"subject=sphere paths.data_root={root.parent} preprocess.force=[composite]`.")


def test_the_named_fix_rewrites_the_unreadable_file(tmp_path: Path, prepare_subject) -> None:
    layout = SubjectLayout(tmp_path / "data" / "s")
    shutil.copytree(prepare_subject(TRUMP, upto="composite"), layout.root, symlinks=True)
    layout.gt(5).write_bytes(b"\xff\xd8 not a whole jpeg")
    command = redo_hint(layout.gt(5)).split("`")[1].split()
    assert command[:2] == ["python", "preprocess.py"]
    proc = run_entry_point(REPO, *command[1:], "preprocess.workers=1", *steps_after("composite"))
    assert proc.returncode == 0, proc.stderr
    assert cv2.imread(str(layout.gt(5))) is not None
