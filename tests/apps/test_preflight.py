"""A refused run answers before the model code loads: each entry script's refusals (ernerf/apps/preflight.py) run as
a user starts the script, under `-X importtime`, and none of them may import torch or Lightning (a checkpoint's step and
stage are read from its pickle alone). Each is the same one-line error as before, in about the time Hydra composes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ernerf.io.layout import SubjectLayout
from ernerf.io.lock import exclusive_lock
from tests.conftest import REPO
from tests.reliability import assert_user_error


def run_refused(script: str, *args: str, cwd: Path) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run an entry script under `-X importtime`; returns the run (its stderr without the import lines) and the
    top-level packages it imported."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-X", "importtime", str(REPO / script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)
    timed = [line for line in done.stderr.splitlines() if line.startswith("import time:")]
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in timed}
    rest = "\n".join(line for line in done.stderr.splitlines() if not line.startswith("import time:"))
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout, rest), imported


def fake_subject(root: Path) -> SubjectLayout:
    """A subject folder with the files train.py checks before it reads them (a dataset of another tool: no step
    markers)."""
    layout = SubjectLayout(root)
    layout.gt_dir.mkdir(parents=True)
    for path in (layout.root / "aud_mel.npy", layout.transforms("train"), layout.transforms("val"), layout.au,
                 layout.background):
        path.write_bytes(b"")
    return layout


def finished_run(run_dir: Path, step: int) -> None:
    """A finished stage's record and a stand-in last.ckpt."""
    (run_dir / "checkpoints").mkdir(parents=True)
    torch.save({"global_step": step}, run_dir / "checkpoints" / "last.ckpt")
    (run_dir / "finished.json").write_text(json.dumps({"step": step, "metrics": {"val/psnr": 20.0}}))


@pytest.fixture
def roots(tmp_path: Path) -> list[str]:
    fake_subject(tmp_path / "data" / "anna")
    return [f"paths.data_root={tmp_path / 'data'}", f"paths.runs_root={tmp_path / 'runs'}"]


def test_serve_refuses_an_untrained_subject_and_a_busy_port_without_torch(tmp_path: Path, roots: list[str]) -> None:
    done, imported = run_refused("serve.py", "subject=anna", "port=0", *roots, cwd=tmp_path)
    assert_user_error(done, "no trained model checkpoint for subject 'anna'", "python train.py stage=head")
    assert not {"torch", "lightning"} & imported
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        done, imported = run_refused("serve.py", "subject=anna", f"port={taken.getsockname()[1]}", *roots, cwd=tmp_path)
    assert_user_error(done, "is in use by another program", "port=<another>")
    assert not {"torch", "lightning"} & imported


@pytest.mark.parametrize("script, args, words", [
    ("infer.py", ["audio=/no/such.wav"], ["audio file not found: /no/such.wav"]),
    ("infer.py", ["audio=/no/such.wav", "text=hello"], ["both audio= and text= are given"]),
    ("infer.py", ["text=hello"], ["no trained model checkpoint for subject 'anna'"]),
    ("evaluate.py", [], ["no trained model checkpoint for subject 'anna'"]),
    ("evaluate.py", ["renders=data", "cross_audio=a.wav"], ["renders=data reads frames", "leave cross_audio out"]),
    ("preprocess.py", ["subject=nobody"], ["no dataset at", "no video given"]),
    ("train.py", ["trainer.max_steps=0"], ["trainer.max_steps=0", "positive"]),
    ("train.py", ["subject=nobody"], ["nobody", "python preprocess.py"]),
    ("train.py", ["ckpt_path=last", "overwrite=true"], ["give one of them"]),
])
def test_refusals_import_no_torch(tmp_path: Path, roots: list[str], script: str, args: list[str],
                                  words: list[str]) -> None:
    subject = [] if any(a.startswith("subject=") for a in args) else ["subject=anna"]
    done, imported = run_refused(script, *subject, *args, *roots, cwd=tmp_path)
    assert_user_error(done, *words)
    assert not {"torch", "lightning"} & imported


def test_train_refuses_a_busy_or_finished_stage_without_torch(tmp_path: Path, roots: list[str]) -> None:
    run_dir = tmp_path / "runs" / "anna" / "head"
    with exclusive_lock(run_dir, "run folder"):  # a first run that is still training
        done, imported = run_refused("train.py", "subject=anna", *roots, cwd=tmp_path)
    assert_user_error(done, "in use by another run", f"pid {os.getpid()}")
    assert not {"torch", "lightning"} & imported
    finished_run(run_dir, 4)
    done, imported = run_refused("train.py", "subject=anna", *roots, cwd=tmp_path)
    assert_user_error(done, "holds a finished head stage (step 4, val/psnr 20.00 dB)", "trainer.max_steps=8",
                      "overwrite=true")
    assert not {"torch", "lightning"} & imported  # the step is read from the checkpoint's pickle alone


def test_an_untrained_stage_beside_a_trained_one_is_refused_without_torch(tmp_path: Path, roots: list[str]) -> None:
    finished_run(tmp_path / "runs" / "anna" / "head", 4)
    for script, extra in (("evaluate.py", []), ("serve.py", ["port=0"])):
        done, imported = run_refused(script, "subject=anna", "stage=lips", *extra, *roots, cwd=tmp_path)
        assert_user_error(done, "no trained lips checkpoint", "(trained: head)", "python train.py stage=lips")
        assert not {"torch", "lightning"} & imported
