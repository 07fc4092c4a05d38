"""Mistakes users make with train.py, infer.py and evaluate.py, on a real subject: each ends in a one-line error
(exit 2, no traceback) that names the fix, or in the documented success, and nothing a user trained is lost."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ernerf.errors import ErnerfError
from ernerf.io.lock import exclusive_lock
from tests.conftest import REPO, compose, shared_clip
from tests.reliability import assert_user_error, tree_digest

CLIP = "train/trump_10s.mp4"
AUDIO = "audio/obama_5s.wav"
TINY = ["debug=fast", "datamodule.num_rays=256", "model.marcher.num_samples=8", "encoder.num_levels=4",
        "encoder.log2_hashmap_size=10", "model.grid.resolution=16", "trainer.max_steps=4",
        "trainer.val_check_interval=4", "datamodule.num_val_frames=1"]


def run_script(script: str, *args: str, cwd: Path, timeout: float = 180,
               python_flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run an entry point as a user would, from `cwd` (`python_flags`: options of the interpreter, e.g. `-X`)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, *python_flags, str(REPO / script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def config(root: Path, *extra: str):
    return compose("train", ["subject=trump", f"paths.data_root={root / 'data'}", f"paths.runs_root={root / 'runs'}",
                             *TINY, *extra])


@pytest.fixture(scope="module")
def trained(prepare_subject, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace (data/, runs/) with the real clip preprocessed and a finished head stage of 4 steps."""
    from ernerf.apps.train import train

    root = tmp_path_factory.mktemp("reliability")
    shutil.copytree(prepare_subject(CLIP), root / "data" / "trump", symlinks=True)
    train(config(root))
    return root


@pytest.fixture
def workspace(trained: Path, tmp_path: Path) -> Path:
    """A copy of the trained workspace that a test may change."""
    shutil.copytree(trained / "runs", tmp_path / "runs")
    (tmp_path / "data").symlink_to(trained / "data")
    return tmp_path


def cli_args(root: Path, *extra: str) -> list[str]:
    return ["subject=trump", f"paths.data_root={root / 'data'}", f"paths.runs_root={root / 'runs'}", *TINY, *extra]


# ---------------------------------------------------------------- a finished stage is never written over
def test_rerunning_a_finished_stage_says_so_and_changes_nothing(workspace: Path) -> None:
    before = tree_digest(workspace / "runs")
    message = assert_user_error(run_script("train.py", *cli_args(workspace), cwd=workspace),
                                "finished head stage", "step 4", "ckpt_path=last", "trainer.max_steps=8",
                                "overwrite=true")
    assert "val/psnr" in message
    assert tree_digest(workspace / "runs") == before


@pytest.mark.parametrize("extra, words", [
    (["ckpt_path=last"], ["already finished", "trainer.max_steps="]),
    (["trainer.max_steps=0"], ["trainer.max_steps=0", "positive"]),
    (["trainer.max_steps=-5"], ["trainer.max_steps=-5", "positive"]),
    (["ckpt_path=/no/such.ckpt"], ["/no/such.ckpt does not exist"]),
    (["ckpt_path=last", "overwrite=true"], ["give one of them"]),
])
def test_bad_resumes_and_step_counts_are_refused(workspace: Path, extra: list[str], words: list[str]) -> None:
    from ernerf.apps.train import train

    before = tree_digest(workspace / "runs")
    with pytest.raises(ErnerfError) as info:
        train(config(workspace, *extra))
    assert all(w in str(info.value) for w in words), str(info.value)
    assert tree_digest(workspace / "runs") == before


def test_an_interrupted_run_is_resumed_not_restarted(workspace: Path) -> None:
    from ernerf.apps.train import train

    run = workspace / "runs" / "trump" / "head"
    (run / "finished.json").unlink()  # as if killed after its last checkpoint
    before = tree_digest(workspace / "runs")
    with pytest.raises(ErnerfError, match="interrupted head run .* ckpt_path=last"):
        train(config(workspace))
    assert tree_digest(workspace / "runs") == before
    train(config(workspace, "ckpt_path=last", "trainer.max_steps=6"))
    assert '"step": 6' in (run / "finished.json").read_text()


def test_overwrite_moves_the_old_run_aside_and_continuing_keeps_the_metrics(workspace: Path) -> None:
    from ernerf.apps.train import train

    run = workspace / "runs" / "trump" / "head"
    old = tree_digest(run)
    train(config(workspace, "overwrite=true", "seed=1"))
    (moved,) = (workspace / "runs" / "trump" / ".replaced").iterdir()
    assert tree_digest(moved) == old  # every file of the old run, unchanged
    assert tree_digest(run)["checkpoints/last.ckpt"] != old["checkpoints/last.ckpt"]
    rows = (run / "csv" / "metrics.csv").read_text().splitlines()
    train(config(workspace, "ckpt_path=last", "trainer.max_steps=8", "seed=1"))
    longer = (run / "csv" / "metrics.csv").read_text().splitlines()
    assert longer[1:len(rows)] == rows[1:] and len(longer) > len(rows)  # the resumed run appended


def test_a_stage_trained_from_a_changed_predecessor_is_flagged_and_retrained_by_stage_all(workspace: Path) -> None:
    from ernerf.apps.chain import run_chain
    from ernerf.apps.runs import file_digest, read_record, stale_warning
    from ernerf.apps.train import train

    runs = workspace / "runs" / "trump"
    train(config(workspace, "stage=lips"))
    assert stale_warning(runs / "lips", "trump") is None
    train(config(workspace, "overwrite=true", "seed=3"))  # the head changes under the finished lips stage
    warning = stale_warning(runs / "lips", "trump")
    assert warning and "has changed since" in warning and "stage=lips overwrite=true" in warning
    chain = config(workspace, "stage=all")
    trained = run_chain(chain, lambda name: config(workspace, f"stage={name}"), train)
    assert trained["head"] is None and trained["lips"] is not None  # head skipped, lips trained again
    assert read_record(runs / "lips").init_from["sha1"] == file_digest(runs / "head" / "checkpoints" / "last.ckpt")
    assert [p.name.split("-")[0] for p in (runs / ".replaced").iterdir()].count("lips") == 1


def test_training_further_ends_with_the_figures_the_checkpoint_and_the_next_commands(workspace: Path) -> None:
    """Also: the job imported Lightning without `transformers` and `scipy.signal`, which torchmetrics would import
    at Lightning's import (`keep_torchmetrics_import_lean`; tests/test_foundation.py checks that both stay
    importable)."""
    done = run_script("train.py", *cli_args(workspace, "ckpt_path=last", "trainer.max_steps=8"), cwd=workspace,
                      python_flags=("-X", "importtime"))
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    errors = "\n".join(line for line in done.stderr.splitlines() if not line.startswith("import time:"))
    assert done.returncode == 0, errors[-2000:]
    summary = done.stdout[done.stdout.index("finished head of trump"):].splitlines()
    assert summary[0].startswith("finished head of trump at step 8: val/psnr ")
    assert str(workspace / "runs" / "trump" / "head" / "checkpoints" / "last.ckpt") in summary[1]
    assert any("python train.py subject=trump stage=lips" in line for line in summary)
    assert any("python infer.py subject=trump stage=head" in line for line in summary)
    kept_out = ["scipy.signal"] + (["transformers"] if importlib.util.find_spec("transformers") else [])
    assert "lightning" in imported and not set(kept_out) & imported

def test_a_second_run_of_the_same_stage_is_refused(workspace: Path) -> None:
    run = workspace / "runs" / "trump" / "head"
    before = tree_digest(workspace / "runs")
    with exclusive_lock(run, "run folder"):  # a first run that is still training
        done = run_script("train.py", *cli_args(workspace, "ckpt_path=last", "trainer.max_steps=8"), cwd=workspace)
    assert_user_error(done, "in use by another run", f"pid {os.getpid()}")
    assert tree_digest(workspace / "runs") == before


# ---------------------------------------------------------------- names stay inside their roots
@pytest.mark.parametrize("script, args, words", [
    ("preprocess.py", ["subject=../outside", "video=v.mp4"], ["subject=../outside", "plain folder name"]),
    ("preprocess.py", ["subject=/tmp/abs", "video=v.mp4"], ["subject=/tmp/abs", "plain folder name"]),
    ("preprocess.py", ["subject=", "video=v.mp4"], ["subject= is empty"]),
    ("preprocess.py", ["video=v.mp4"], ["subject= is missing", "python preprocess.py subject="]),
    ("train.py", ["subject=../outside"], ["plain folder name"]),
    ("train.py", ["-m", "subject=ok,../outside"], ["subject=../outside"]),
    ("infer.py", ["subject=", "audio=a.wav"], ["subject= is empty"]),
    ("evaluate.py", ["stage=head"], ["subject= is missing", "python evaluate.py subject="]),
])
def test_subject_names_stay_inside_their_roots(tmp_path: Path, script: str, args: list[str], words: list[str]) -> None:
    cwd = tmp_path / "work"
    cwd.mkdir()
    assert_user_error(run_script(script, *args, cwd=cwd), *words)
    assert not any(tmp_path.rglob("*.json")) and sorted(p.name for p in tmp_path.iterdir()) == ["work"]
    assert not any(cwd.iterdir())  # not even Hydra's run folder


def test_a_non_ascii_subject_name_reaches_the_program(tmp_path: Path) -> None:
    done = run_script("preprocess.py", "subject=Zoë", cwd=tmp_path)
    assert_user_error(done, "no dataset at data/Zoë yet")


# ---------------------------------------------------------------- inference and evaluation
def infer_config(root: Path, *extra: str, audio: Path | None = None):
    return compose("infer", ["subject=trump", f"audio={audio or shared_clip(AUDIO)}",
                             f"paths.data_root={root / 'data'}", f"paths.runs_root={root / 'runs'}", "progress=false",
                             "downscale=8", *extra])


@pytest.mark.parametrize("extra, words", [
    (["downscale=0"], ["downscale=0", ">= 1"]),
    (["downscale=-2"], ["downscale=-2", ">= 1"]),
    (["output=/proc/ernerf_out"], ["cannot write to /proc/ernerf_out", "output=<path>"]),
])
def test_bad_inference_options_are_one_line_errors(workspace: Path, extra: list[str], words: list[str],
                                                  tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ernerf.apps.inference import infer_from_config

    monkeypatch.chdir(tmp_path)  # where outputs/ would go

    with pytest.raises(ErnerfError) as info:
        infer_from_config(infer_config(workspace, *extra))
    assert all(w in str(info.value) for w in words), str(info.value)
    assert "bc.jpg" not in str(info.value)
    assert not (tmp_path / "outputs").exists()  # a refused run makes no output folder


def test_an_output_below_a_file_is_refused_by_evaluate(workspace: Path) -> None:
    (workspace / "a_file").write_text("")
    done = run_script("evaluate.py", "subject=trump", f"paths.data_root={workspace / 'data'}",
                      f"paths.runs_root={workspace / 'runs'}", f"output={workspace / 'a_file' / 'eval'}",
                      "downscale=8", "cross_audio=null", cwd=workspace)
    assert_user_error(done, "cannot write to", "Not a directory", "output=<path>")


def test_evaluate_py_takes_a_stage_by_name_and_reads_it_from_the_checkpoint(workspace: Path) -> None:
    """`stage=` reaches evaluate.py as a plain name; the stage it reports is the one the checkpoint records."""
    args = ["subject=trump", f"paths.data_root={workspace / 'data'}", f"paths.runs_root={workspace / 'runs'}",
            "downscale=8", "max_frames=3"]
    assert_user_error(run_script("evaluate.py", *args, "stage=lips", cwd=workspace),
                      "no trained lips checkpoint", "(trained: head)", "python train.py stage=lips subject=trump")
    done = run_script("evaluate.py", *args, "stage=head", cwd=workspace)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((workspace / "runs" / "trump" / "eval" / "metrics.json").read_text())
    assert report["stage"] == "head" and report["frames"]["validation"][:1] and report["metrics"]["psnr"] > 0
    assert report["checkpoint"] == str(workspace / "runs" / "trump" / "head" / "checkpoints" / "last.ckpt")
    assert "W0000" not in done.stderr and "absl" not in done.stderr  # mediapipe's start-up log stays off the terminal
    assert "region_share_face" in report["metrics"]


def test_a_killed_inference_leaves_no_temporaries_after_the_next_run(workspace: Path) -> None:
    from ernerf.apps.inference import infer_from_config
    from ernerf.constants import SAMPLE_RATE
    from ernerf.io.audio import load_audio, write_wav

    out = workspace / "out"
    # 2 s of the speech: the killed run only has to reach its first temporary, the next run renders all of it
    audio = write_wav(workspace / "speech.wav", load_audio(shared_clip(AUDIO), sr=SAMPLE_RATE)[:2 * SAMPLE_RATE],
                      SAMPLE_RATE)
    args = ["subject=trump", f"audio={audio}", f"paths.data_root={workspace / 'data'}",
            f"paths.runs_root={workspace / 'runs'}", "downscale=8", "progress=false", f"output={out}"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, str(REPO / "infer.py"), *args], cwd=workspace, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(out.glob(".tmp.*")) and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert list(out.glob(".tmp.*")), "the run was not killed while writing"
    # the next run in this process: the clean-up is inference's, not the script's (infer.py runs as a user's above)
    infer_from_config(infer_config(workspace, f"output={out}", audio=audio))
    assert not list(out.glob(".tmp.*")) and (out / "result.mp4").stat().st_size > 0


def test_a_wrapped_user_error_is_still_one_line(workspace: Path) -> None:
    """Errors raised while Hydra builds the model reach the user as the project's one-line error, not Hydra's trace."""
    before = tree_digest(workspace / "runs")
    done = run_script("train.py", *cli_args(workspace, "stage=torso", "model.frozen=[head_field\\.]"), cwd=workspace)
    assert_user_error(done, "match no parameter", "model.frozen")
    assert tree_digest(workspace / "runs") == before
