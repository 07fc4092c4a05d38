"""Training both codes' head stage on one subject for the same steps, each scored at the same steps.

ER-NeRF counts its run in epochs (one step per training frame) and evaluates every few epochs, so the schedule is
made of whole epochs: `evals` evaluations, `eval_epochs` epochs apart; both codes train `steps` steps and are scored
after every `eval_steps`. ER-NeRF scores itself during training (main.py's validation: the first 100 validation
frames, its EMA weights); this project saves a checkpoint at each of those steps and `evaluate.py` scores it on the
same frames (`max_frames`). The training clocks: ER-NeRF's printed epochs, time-stamped as they arrive; ours,
callbacks/train_clock.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ernerf.errors import ErnerfError

from .dataset import Subject

REPO = Path(__file__).resolve().parents[2]
ALEXNET = "alexnet-owt-7be5be79.pth"  # the file name torchvision's hub cache holds AlexNet's weights under


@dataclass(frozen=True)
class Schedule:
    """`evals` evaluations `eval_epochs` epochs of `steps_per_epoch` steps apart; training ends at the last one."""

    steps_per_epoch: int
    eval_epochs: int
    evals: int

    @property
    def eval_steps(self) -> int:
        return self.eval_epochs * self.steps_per_epoch

    @property
    def steps(self) -> int:
        return self.evals * self.eval_steps


def make_schedule(steps: int, evals: int, steps_per_epoch: int) -> Schedule:
    """The whole-epoch schedule nearest to `steps` steps with `evals` evaluations (fewer when the run is shorter)."""
    if steps < 1 or evals < 1:
        raise ErnerfError(f"--steps and --evals must be positive, got {steps} and {evals}.")
    epochs = max(1, round(steps / steps_per_epoch))
    evals = min(evals, epochs)
    return Schedule(steps_per_epoch, max(1, round(epochs / evals)), evals)


def lpips_home(weights: Path | None, out: Path) -> Path | None:
    """A private TORCH_HOME whose hub cache holds AlexNet's weights (a link to `weights`), so that ER-NeRF's LPIPS
    finds them instead of downloading; None without weights."""
    if weights is None:
        return None
    if not weights.is_file():
        raise ErnerfError(f"no file {weights}: --lpips-weights takes torchvision's {ALEXNET}.")
    link = out / "torch_home" / "hub" / "checkpoints" / ALEXNET
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink():
        link.unlink()
    link.symlink_to(weights.resolve())
    return out / "torch_home"


def run_timestamped(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> tuple[int, float]:
    """Run `cmd`, writing each stdout line to `log` as `<seconds since start>\\t<line>` as it arrives (stderr to
    `log` with .err); -> (exit status, wall seconds)."""
    start = time.perf_counter()
    with log.open("w") as out, log.with_suffix(".err").open("w") as err:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1)
        for line in proc.stdout:
            out.write(f"{time.perf_counter() - start:.3f}\t{line.rstrip()}\n")
            out.flush()
        status = proc.wait()
    return status, time.perf_counter() - start


def ernerf_command(checkout: Path, data: Path, workspace: Path, schedule: Schedule, subject: Subject,
                   python: str, extra: list[str]) -> list[str]:
    """ER-NeRF's head stage as its README trains it (-O: fp16, the eye control), frames preloaded on the GPU as ours.
    Subjects of 10,000 training frames or more get the per-frame codes its assertion asks for (--ind_num)."""
    codes = ["--ind_num", str(subject.num_train + 1)] if subject.num_train >= 10000 else []
    return [python, str(checkout / "main.py"), str(data), "--workspace", str(workspace), "-O",
            "--iters", str(schedule.steps), "--preload", "2", "--asr_model", str(subject.feature_dim), *codes, *extra]


def run_ernerf(checkout: Path, cmd: list[str], schedule: Schedule, out: Path, torch_home: Path | None) -> dict:
    """Train ER-NeRF; its stdout, time-stamped, in <out>/ernerf.log. -> the run's facts."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "ERNERF_SBS_EVAL_STEPS": str(schedule.eval_steps)}
    if torch_home is not None:
        env.update(ERNERF_SBS_LPIPS="1", TORCH_HOME=str(torch_home))
    status, wall = run_timestamped(cmd, checkout, env, out / "ernerf.log")
    return {"command": cmd, "status": status, "wall_s": round(wall, 1), "log": str(out / "ernerf.log")}


def ours_command(subject: Subject, data_root: Path, runs_root: Path, features: str, schedule: Schedule,
                 clock: Path, overrides: list[str]) -> list[str]:
    """train.py stage=head for the schedule's steps on one GPU, frames preloaded, no validation (evaluate.py scores
    the checkpoints saved at the evaluation steps instead), the training clock on."""
    every = schedule.eval_steps
    return [sys.executable, str(REPO / "train.py"), f"subject={subject.name}", f"paths.data_root={data_root}",
            f"paths.runs_root={runs_root}", "stage=head", f"audio_features={features}", "trainer=gpu",
            f"trainer.max_steps={schedule.steps}", "datamodule.preload=true", "datamodule.num_workers=0",
            "++trainer.limit_val_batches=0", "callbacks.checkpoint.monitor=null", "callbacks.checkpoint.save_top_k=-1",
            f"callbacks.checkpoint.every_n_train_steps={every}",
            "+callbacks.train_clock._target_=callbacks.train_clock.TrainClock",
            f"+callbacks.train_clock.path={clock}", f"+callbacks.train_clock.every_n_steps={every}", *overrides]


def run_logged(cmd: list[str], log: Path, what: str) -> float:
    """Run `cmd` from the repository, output to `log`; an error naming the log when it fails. -> wall seconds."""
    start = time.perf_counter()
    with log.open("w") as out:
        status = subprocess.run(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT).returncode
    if status != 0:
        raise ErnerfError(f"{what} failed (exit {status}): see {log}.")
    return time.perf_counter() - start


def checkpoint_steps(run_dir: Path) -> dict[int, Path]:
    """step -> checkpoint of ModelCheckpoint's `step<NNNNNNN>.ckpt` files in a run."""
    found = {}
    for path in (run_dir / "checkpoints").glob("step*.ckpt"):
        match = re.fullmatch(r"step(\d+)(-v\d+)?\.ckpt", path.name)
        if match:
            found[int(match.group(1))] = path
    return found


def evaluate_command(subject: Subject, data_root: Path, runs_root: Path, scored: str, folder: Path,
                     weights: Path | None) -> list[str]:
    """evaluate.py on the validation frames ER-NeRF scores (the first `num_val_scored`), into `folder`; `scored`:
    run=<our checkpoint> or renders=<ER-NeRF's frames>."""
    return [sys.executable, str(REPO / "evaluate.py"), f"subject={subject.name}", f"paths.data_root={data_root}",
            f"paths.runs_root={runs_root}", scored, f"max_frames={subject.num_val_scored}", f"output={folder}",
            "progress=false", *([f"lpips.weights={weights}"] if weights else [])]


def evaluate_checkpoints(subject: Subject, data_root: Path, runs_root: Path, out: Path,
                         weights: Path | None) -> dict[int, dict]:
    """evaluate.py on each checkpoint of our run, on ER-NeRF's validation frames; step -> its metrics.json."""
    results, steps = {}, checkpoint_steps(runs_root / subject.name / "head")
    for step, ckpt in sorted(steps.items()):
        folder = out / "ours_eval" / f"step{step}"
        folder.mkdir(parents=True, exist_ok=True)
        last = ["save_renders=true"] if step == max(steps) else []  # the frames report's comparison shows
        run_logged(evaluate_command(subject, data_root, runs_root, f"run={ckpt}", folder, weights) + last,
                   folder / "evaluate.log", f"evaluate.py on {ckpt}")
        results[step] = json.loads((folder / "metrics.json").read_text())
    return results


ERNERF_VAL, ERNERF_EVAL = "ernerf_val", "ernerf_eval"  # ER-NeRF's last validation renders, and their figures


def keep_last_renders(workspace: Path, out: Path) -> int:
    """Copy the colour renders of ER-NeRF's last evaluation (<workspace>/validation/<name>_ep<E>_<i>_rgb.png, the
    largest E) into <out>/ernerf_val/, where `report` scores them; -> how many (0: it saved none)."""
    epochs: dict[int, list[Path]] = {}
    for path in (workspace / "validation").glob("*_rgb.png"):
        match = re.search(r"_ep(\d+)_\d+_rgb\.png$", path.name)
        if match:
            epochs.setdefault(int(match.group(1)), []).append(path)
    if not epochs:
        return 0
    keep = out / ERNERF_VAL
    keep.mkdir(parents=True, exist_ok=True)
    for path in epochs[max(epochs)]:
        shutil.copy2(path, keep / path.name)
    return len(epochs[max(epochs)])


def score_ernerf_renders(subject: Subject, data_root: Path, out: Path, weights: Path | None) -> dict | None:
    """ER-NeRF's last validation renders (<out>/ernerf_val/) scored by `evaluate.py renders=` as our checkpoints are,
    into <out>/ernerf_eval/ unless they were already; -> that metrics.json, None without the renders."""
    return score_renders(subject, data_root, out, out / ERNERF_VAL, out / ERNERF_EVAL, weights, "ER-NeRF's")


def lmd_available() -> bool:
    """Whether evaluate.py can score LMD here (its landmarks are mediapipe's)."""
    return importlib.util.find_spec("mediapipe") is not None


def score_renders(subject: Subject, data_root: Path, out: Path, renders: Path, folder: Path, weights: Path | None,
                  whose: str) -> dict | None:
    """The frames in `renders` scored by `evaluate.py renders=` into `folder` unless they were already; -> that
    metrics.json, None without the renders."""
    if not renders.is_dir():
        return None
    if not (folder / "metrics.json").is_file():
        print(f"scoring {whose} renders in {renders} with evaluate.py (log: {folder / 'evaluate.log'})", flush=True)
        folder.mkdir(parents=True, exist_ok=True)
        run_logged(evaluate_command(subject, data_root, out / "ours_runs", f"renders={renders}", folder, weights),
                   folder / "evaluate.log", f"evaluate.py renders={renders}")
    return json.loads((folder / "metrics.json").read_text())
