"""`python train.py -m` as a user runs it: each job of a sweep in its own folder with its own W&B run, a ranked summary,
a refused job that does not end the sweep, and an Optuna search."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.test_train import TINY

SWEEP = [*TINY, "datamodule.num_rays=32", "model.marcher.num_samples=4", "trainer.max_steps=1",
         "trainer.val_check_interval=1", "datamodule.num_val_frames=1"]


def multirun(tmp: Path, *overrides: str, timeout: int = 300):
    """`python train.py -m subject=sphere ...` on the synthetic subject in `tmp` (W&B offline)."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO
    from tests.synthetic import write_synthetic_subject

    if not (tmp / "data" / "sphere").exists():
        write_synthetic_subject(tmp / "data" / "sphere", num_frames=12, size=16)
    cmd = [sys.executable, "train.py", "-m", "subject=sphere", f"paths.data_root={tmp / 'data'}",
           f"paths.runs_root={tmp / 'runs'}", *SWEEP, *overrides]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "COLUMNS": "200"}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def read_summary(sweep_dir: Path) -> list[dict[str, str]]:
    import csv

    with open(sweep_dir / "summary.csv") as f:
        return list(csv.DictReader(f))


def read_offline_wandb_run(run_dir: Path) -> dict:
    """What an offline W&B run recorded (its .wandb file): group, tags, name, and the keys of its history rows."""
    from wandb.proto import wandb_internal_pb2
    from wandb.sdk.internal import datastore

    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")  # one W&B run per job: finish() closed the last
    store = datastore.DataStore()
    store.open_for_scan(str(path))
    found: dict = {"history": set()}
    while (data := store.scan_data()) is not None:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        if record.WhichOneof("record_type") == "run":
            found.update(group=record.run.run_group, tags=list(record.run.tags), name=record.run.display_name)
        elif record.WhichOneof("record_type") == "history":
            found["history"] |= {item.key or "/".join(item.nested_key) for item in record.history.item}
    return found


def check_jobs_of_the_sweep(done, sweep: Path) -> None:
    """A sweep over encoder.log2_hashmap_size=9,12 with W&B and TensorBoard: each job in its own folder with its own
    W&B run in the sweep's group, ranked in the summary."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert runs == ["head-encoder.log2_hashmap_size=12", "head-encoder.log2_hashmap_size=9"]
    rows = read_summary(sweep)
    assert [r["status"] for r in rows] == ["finished", "finished"] and [r["rank"] for r in rows] == ["1", "2"]
    assert float(rows[0]["val/psnr"]) >= float(rows[1]["val/psnr"])
    for row in rows:
        finished = json.loads((Path(row["run_dir"]) / "finished.json").read_text())
        assert abs(finished["metrics"]["val/psnr"] - float(row["val/psnr"])) < 0.01
        best = finished["best"]  # the checkpoint kept at the best validation (debug=fast keeps none), as recorded
        assert row["best"] == ("" if best is None else f"{best['value']:.2f} (step {best['step']})")
    notes = {r["encoder.log2_hashmap_size"]: r["notes"] for r in rows}
    assert notes["9"] == "" and "has no effect" in notes["12"]  # the finest level, 63^2 vertices, fits 2^12 rows
    warning = "WARNING] - encoder.log2_hashmap_size=12 has no effect"
    assert (done.stdout + done.stderr).count(warning) == 1  # once, at the job's start
    assert "sweep" in done.stdout and "head-encoder.log2_hashmap_size=12" in done.stdout  # the printed table
    for run in runs:
        wandb_run = read_offline_wandb_run(sweep / run)
        assert wandb_run["group"] == f"sphere-{sweep.name}" and wandb_run["name"] == f"sphere-{run}"
        assert wandb_run["tags"] == ["sphere", "head", "debug=fast"]
        assert {"val/psnr", "val_images/0_render", "val_images/0_truth", "val_images/0_depth"} <= {
            key.removesuffix("/_type") for key in wandb_run["history"]}
        events = EventAccumulator(str(sweep / run / "tensorboard")).Reload()
        assert {"val_images/0_render", "val_images/0_truth", "val_images/0_depth"} <= set(events.Tags()["images"])


def test_multirun_jobs_get_folders_and_wandb_runs_are_ranked_and_later_sweeps_do_not_collide(tmp_path: Path) -> None:
    """Two sweeps in one runs folder: the first, unnamed (its folder and W&B group named after its start time), is
    checked by check_jobs_of_the_sweep; the second, named, meets an earlier run's checkpoint where its first job
    would train: that job is refused, not the sweep, and the first sweep's folders are left as they were."""
    first = multirun(tmp_path, "logger=[wandb,tensorboard]", "encoder.log2_hashmap_size=choice(9,12)")
    assert first.returncode == 0, first.stderr[-3000:]
    (earlier,) = (tmp_path / "runs" / "sphere" / "sweeps").iterdir()
    check_jobs_of_the_sweep(first, earlier)
    named = tmp_path / "runs" / "sphere" / "sweeps" / "named"
    saved = named / "head-encoder.log2_hashmap_size=9" / "checkpoints" / "step0000001.ckpt"
    saved.parent.mkdir(parents=True)
    saved.write_bytes(b"an earlier run")
    again = multirun(tmp_path, "sweep=named", "encoder.log2_hashmap_size=9,10")
    assert again.returncode == 1 and "1 of 2 jobs did not finish: #0 refused" in again.stderr
    rows = read_summary(named)
    assert [(r["encoder.log2_hashmap_size"], r["status"]) for r in rows] == [("10", "finished"), ("9", "refused")]
    assert "holds checkpoints of an earlier head run" in rows[1]["error"] and saved.read_bytes() == b"an earlier run"
    for row in read_summary(earlier):  # the same value 9 in the first sweep: its own folders, untouched
        assert row["status"] == "finished" and Path(row["run_dir"]).parent == earlier
        assert (Path(row["run_dir"]) / "checkpoints" / "last.ckpt").is_file()


def test_an_optuna_search_runs_its_trials_and_ranks_them(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="the `search` extra: pip install -e .[search]")
    done = multirun(tmp_path, "hparams_search=head_optuna", "sweep=search", "hydra.sweeper.n_trials=2",
                    "hydra.sweeper.sampler.n_startup_trials=2", "encoder.desired_resolution=64")
    assert done.returncode == 0, done.stderr[-3000:]
    sweep = tmp_path / "runs" / "sphere" / "sweeps" / "search"
    rows = read_summary(sweep)
    assert [r["status"] for r in rows] == ["finished", "finished"]
    assert {"loss.weights.opacity_entropy", "loss.weights.ambient_audio"} <= set(rows[0])
    assert not {"encoder.log2_hashmap_size", "encoder.desired_resolution"} & set(rows[0])  # fixed on the command line
    assert all(1e-5 <= float(r["loss.weights.opacity_entropy"]) <= 1e-3 for r in rows)
    best = OmegaConf.load(sweep / "optimization_results.yaml")  # the sweeper's own record: the summary's first row
    assert abs(best.best_value - float(rows[0]["val/psnr"])) < 0.01
    assert {k: f"{v}" for k, v in best.best_params.items()} == {k: rows[0][k] for k in best.best_params}


def test_the_local_gpus_launcher_runs_jobs_side_by_side_each_in_its_own_process_and_output(tmp_path: Path) -> None:
    """`hydra/launcher=local_gpus` with two jobs at once: three seeds finish and are ranked as under Hydra's own
    launcher; the second job starts before the first ends; each job's terminal output lands in its job folder; a
    refused job is told and the sweep goes on."""
    done = multirun(tmp_path, "hydra/launcher=local_gpus", "hydra.launcher.jobs_per_gpu=2", "sweep=side",
                    "seed=0,1,2", "hydra.launcher.gpus=[]")
    assert done.returncode == 0, done.stderr[-3000:]
    sweep = tmp_path / "runs" / "sphere" / "sweeps" / "side"
    rows = read_summary(sweep)
    assert sorted((r["seed"], r["status"]) for r in rows) == [("0", "finished"), ("1", "finished"), ("2", "finished")]
    lines = (done.stdout + done.stderr).splitlines()
    assert any("launching 3 job(s), 2 at once (no GPU)" in line for line in lines)
    at = {key: next(i for i, line in enumerate(lines) if key in line) for key in ("#1 started: seed=1", "#0 ended")}
    assert at["#1 started: seed=1"] < at["#0 ended"]  # side by side
    ended = lines[at["#0 ended"]].split(": ", 1)[1]
    assert ended == f"val/psnr {float(next(r for r in rows if r['seed'] == '0')['val/psnr']):.4g}", ended
    for num in range(3):
        output = (sweep / ".jobs" / str(num) / "output.txt").read_text()
        assert "finished head of sphere" in output and f"training sphere/head-seed={num} " in output
    assert "finished head of sphere" not in done.stdout  # the jobs' own terminal output stays in their files
    again = multirun(tmp_path, "hydra/launcher=local_gpus", "hydra.launcher.jobs_per_gpu=2", "sweep=side",
                     "seed=0,3", "hydra.launcher.gpus=[]")  # seed=0 meets its finished run: refused, seed=3 trains
    assert again.returncode == 1 and "1 of 2 jobs did not finish: #0 refused" in again.stderr
    assert sorted((r["seed"], r["status"]) for r in read_summary(sweep)) == [("0", "refused"), ("3", "finished")]


def test_local_gpus_slots_take_turns_over_the_gpus_and_name_what_differs(monkeypatch: pytest.MonkeyPatch) -> None:
    from ernerf.errors import ErnerfError
    from hydra_plugins.ernerf_launchers.local_gpus import job_slots, varying_overrides, visible_gpus

    assert job_slots(["0", "1"], 2) == ["0", "1", "0", "1"] and job_slots([], 3) == [None, None, None]
    with pytest.raises(ErnerfError, match="jobs_per_gpu must be 1 or more"):
        job_slots(["0"], 0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 5")
    assert visible_gpus("auto") == ["2", "5"] and visible_gpus(2) == ["0", "1"] and visible_gpus([3]) == ["3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus("auto") == []
    jobs = [["subject=anna", "seed=0", "lr=1"], ["subject=anna", "seed=1", "lr=1"]]
    assert varying_overrides(jobs) == [["seed=0"], ["seed=1"]] and varying_overrides(jobs[:1]) == [jobs[0]]


def test_local_gpus_refuses_data_parallel_jobs_before_any_starts(tmp_path: Path) -> None:
    done = multirun(tmp_path, "hydra/launcher=local_gpus", "seed=0,1", "trainer=ddp_cpu", "trainer.devices=2")
    assert done.returncode != 0 and "gives each job one GPU, and job #0 asks for trainer.devices=2" in done.stderr
    assert not list((tmp_path / "runs" / "sphere" / "sweeps").glob("*/head-*"))


CRASHING_APP = '''
import os, signal, time
import hydra

@hydra.main(config_path=None, config_name=None, version_base="1.3")
def main(cfg):
    if cfg.crash:
        os.kill(os.getpid(), signal.SIGSEGV)  # as a job whose CUDA driver crashed
    time.sleep(1)
    return 1.5


if __name__ == "__main__":
    main()
'''


def test_a_job_whose_process_dies_is_recorded_as_failed_and_the_sweep_goes_on(tmp_path: Path) -> None:
    """Under Hydra's own launcher a job that segfaults takes the whole sweep with it; under local_gpus only its own
    process dies: the launcher writes its record (failed, with the signal and its output file), the next jobs run."""
    import os
    import subprocess
    import sys

    from ernerf.apps.sweeps import read_jobs
    from tests.conftest import REPO

    (tmp_path / "app.py").write_text(CRASHING_APP)
    launcher = ["hydra.launcher._target_=hydra_plugins.ernerf_launchers.local_gpus.LocalGPULauncher",
                "+hydra.launcher.gpus=[]", "+hydra.launcher.jobs_per_gpu=1", "hydra.sweep.dir=sweep"]
    done = subprocess.run([sys.executable, "app.py", "-m", *launcher, "+crash=false,true,false"], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stdout + done.stderr
    assert "#1 failed after" in log and "its process died (SIGSEGV)" in log and "#2 ended" in log
    (lost,) = read_jobs(tmp_path / "sweep")
    assert lost["job"] == 1 and lost["status"] == "failed" and lost["swept"] == {"crash": "True"}
    assert "its process died (SIGSEGV); its output: sweep/1/output.txt" in lost["error"]
