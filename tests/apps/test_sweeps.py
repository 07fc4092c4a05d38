"""Sweeps (ernerf/apps/sweeps.py): swept keys from Hydra's parser, a job's record when it finishes, fails or is refused,
swept values without effect, and the ranked summary."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf, open_dict

from ernerf.apps.sweep_args import swept_keys
from ernerf.apps.sweeps import (hash_table_notes, job_run_name, label_run, overridden_values, ranked, rerun_arguments,
                                summary_rows, sweep_job, write_summary)
from ernerf.errors import ErnerfError
from tests.conftest import CONF_DIR, compose


def test_swept_keys_are_the_ones_hydra_reads_as_sweeps() -> None:
    argv = ["-m", "stage=head", "encoder.log2_hashmap_size=14,16", "model.frozen=[a,b]", "+x=range(1,3)", "seed=1",
            "y=interval(0.1,1.0)", "z=choice(a,b)", "q='a,b'", "w=tag(log,interval(1e-5,1e-3))", "~v", "--cfg"]
    assert swept_keys(argv) == {"encoder.log2_hashmap_size", "x", "y", "z", "w"}


def test_a_job_is_named_after_its_swept_values_unless_the_name_would_be_too_long() -> None:
    assert job_run_name("head", "encoder.log2_hashmap_size=14", 3) == "head-encoder.log2_hashmap_size=14"
    assert job_run_name("head", "", 3) == "head-job3"
    assert job_run_name("lips", ",".join(f"model.key{i}=value{i}" for i in range(20)), 7) == "lips-job7"


def test_a_sweep_over_subjects_gets_a_folder_of_its_own() -> None:
    from ernerf.apps.sweep_args import SUBJECTS_SWEEP_DIR, sweep_folder_over_subjects

    assert sweep_folder_over_subjects(["-m", "subject=a,b", "seed=1,2"]) == ["-m", "subject=a,b", "seed=1,2",
                                                                            SUBJECTS_SWEEP_DIR]
    assert sweep_folder_over_subjects(["-m", "subject=a", "seed=1,2"]) == ["-m", "subject=a", "seed=1,2"]
    given = ["-m", "subject=a,b", "hydra.sweep.dir=elsewhere"]
    assert sweep_folder_over_subjects(given) == given


@pytest.fixture
def multirun_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A job of a multirun `train.py -m subject=someone encoder.log2_hashmap_size=10,14` as Hydra would start it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    def start(value: int):
        overrides = ["subject=someone", f"paths.runs_root={tmp_path / 'runs'}", "sweep=test", "encoder.num_levels=4",
                     "encoder.desired_resolution=64", f"encoder.log2_hashmap_size={value}"]
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose("train", overrides, return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.mode = RunMode.MULTIRUN
            cfg.hydra.job.num = 3
            cfg.hydra.runtime.output_dir = str(tmp_path / "job")
            cfg.hydra.overrides.task = overrides
        HydraConfig.instance().set_config(cfg)
        task = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        return task

    monkeypatch.setattr(sys, "argv", ["train.py", "-m", "subject=someone", "encoder.log2_hashmap_size=10,14"])
    yield start
    HydraConfig.instance().cfg = None


def job_record(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "job" / "job.json").read_text())


def test_a_failed_job_is_recorded_and_returns_nothing(multirun_job, tmp_path: Path) -> None:
    def crash(cfg):
        raise RuntimeError("out of memory")

    assert sweep_job(crash)(multirun_job(10)) is None
    record = job_record(tmp_path)
    assert record["status"] == "failed" and record["error"] == "RuntimeError: out of memory" and record["job"] == 3
    assert record["swept"] == {"encoder.log2_hashmap_size": "10"} and record["notes"] == []
    sweep = tmp_path / "runs" / "someone" / "sweeps" / "test"
    assert record["run_dir"] == str(sweep / "head-encoder.log2_hashmap_size=10")


def test_a_refused_job_says_why_and_the_record_keeps_it(multirun_job, tmp_path: Path, capsys) -> None:
    def refuse(cfg):
        raise ErnerfError("the run folder holds a finished head stage")

    assert sweep_job(refuse)(multirun_job(14)) is None
    record = job_record(tmp_path)
    assert record["status"] == "refused" and record["error"] == "the run folder holds a finished head stage"
    assert "error: the run folder holds a finished head stage" in capsys.readouterr().err
    assert len(record["notes"]) == 1 and "has no effect" in record["notes"][0]  # 63^2 fits 2^12 rows


def test_a_job_whose_config_cannot_be_built_is_refused_and_the_sweep_goes_on(multirun_job, tmp_path: Path) -> None:
    cfg = multirun_job(14)
    cfg.encoder.desired_resolution = 8  # below base_resolution: the encoder refuses, while its table is checked

    assert sweep_job(lambda c: 1.0)(cfg) is None
    record = job_record(tmp_path)
    assert record["status"] == "refused" and "desired_resolution" in record["error"]


def test_a_finished_job_records_its_figures_from_finished_json(multirun_job, tmp_path: Path) -> None:
    from ernerf.apps.runs import mark_finished

    def fit(cfg):
        Path(cfg.run_dir, "checkpoints").mkdir(parents=True)
        Path(cfg.run_dir, "checkpoints", "last.ckpt").write_bytes(b"")
        mark_finished(cfg.run_dir, 7, {"val/psnr": 21.5}, None)
        return 21.5

    assert sweep_job(fit)(multirun_job(10)) == 21.5
    record = job_record(tmp_path)
    assert record["status"] == "finished" and record["val/psnr"] == 21.5 and record["step"] == 7


def test_a_refusal_in_a_sweep_suggests_commands_that_find_the_same_folder(multirun_job, tmp_path: Path) -> None:
    from ernerf.apps.runs import refusal

    cfg = multirun_job(10)
    assert rerun_arguments() == ["-m", "sweep=test", "encoder.log2_hashmap_size=10"]
    label_run(cfg)
    Path(cfg.run_dir, "checkpoints").mkdir(parents=True)
    torch.save({"global_step": 3}, Path(cfg.run_dir, "checkpoints", "last.ckpt"))  # an interrupted run
    message = refusal(Path(cfg.run_dir), "someone", "head", rerun_arguments())
    assert "`python train.py subject=someone stage=head -m sweep=test encoder.log2_hashmap_size=10 ckpt_path=last`" \
        in message


def test_a_stage_all_job_is_recorded_by_its_last_stage_folder(tmp_path: Path) -> None:
    from ernerf.apps.sweeps import final_run_dir

    cfg = compose("train", ["subject=someone", "stage=all", "run_name='all-seed=1'", f"run_dir='{tmp_path / 'all-seed=1'}'"])
    assert final_run_dir(cfg) == tmp_path / "torso-seed=1"
    assert final_run_dir(compose("train", ["subject=someone"])) == Path("runs/someone/head")


def test_outside_a_multirun_the_job_is_the_task_itself() -> None:
    def refuse(cfg):
        raise ErnerfError("no")

    with pytest.raises(ErnerfError):
        sweep_job(refuse)(compose("train", ["subject=someone"]))


@pytest.mark.parametrize("encoder, size, fits", [("triplane", 11, False), ("triplane", 12, True),
                                                 ("triplane", 16, True), ("grid3d", 17, False), ("grid3d", 18, True)])
def test_a_hash_table_every_level_fits_in_is_reported(encoder: str, size: int, fits: bool) -> None:
    cfg = compose("train", ["subject=someone", f"encoder={encoder}", "encoder.num_levels=4",
                            "encoder.desired_resolution=64", f"encoder.log2_hashmap_size={size}"])
    notes = hash_table_notes(cfg, {"encoder.log2_hashmap_size": size})
    assert bool(notes) == fits  # the finest level has 63^2 = 3969 <= 2^12 (triplane) or 63^3 <= 2^18 (grid3d) vertices
    assert not hash_table_notes(cfg, {"encoder.num_levels": 4})  # only a swept table size is checked


def test_a_value_the_config_does_not_hold_is_reported() -> None:
    cfg = compose("train", ["subject=someone", "encoder.log2_hashmap_size=14"])
    given = {"encoder.log2_hashmap_size": 14, "encoder": "triplane"}
    assert overridden_values(cfg, given, {"encoder": "triplane"}) == []
    notes = overridden_values(cfg, {"encoder.log2_hashmap_size": 16, "encoder": "grid3d"}, {"encoder": "triplane"})
    assert notes == ["encoder.log2_hashmap_size=16 is overridden: the run uses 14",
                     "encoder=grid3d is overridden: the run uses triplane"]


def job(num: int, status: str, psnr: float | None, size: str) -> dict:
    return {"job": num, "status": status, "val/psnr": psnr, "swept": {"encoder.log2_hashmap_size": size},
            "notes": [], "run_dir": f"runs/x/sweeps/s/head-{size}", "error": None if status == "finished" else "why",
            "step": 5 if status == "finished" else None}


def test_jobs_rank_by_psnr_then_unscored_then_unfinished(tmp_path: Path) -> None:
    jobs = ranked([job(0, "failed", None, "9"), job(1, "finished", 20.0, "10"), job(2, "refused", None, "11"),
                   job(3, "finished", 25.0, "12"), job(4, "finished", None, "13")])
    assert [(j["rank"], j["job"]) for j in jobs] == [(1, 3), (2, 1), (3, 4), (4, 0), (5, 2)]
    jobs[0]["best"] = {"step": 3, "value": 26.5}  # the other records are as sweeps before "best" wrote them
    columns, rows = summary_rows(jobs)
    assert columns == ["rank", "job", "status", "val/psnr", "best", "step", "encoder.log2_hashmap_size", "notes",
                       "run_dir", "error"]
    assert rows[0]["val/psnr"] == "25.00" and rows[0]["encoder.log2_hashmap_size"] == "12"
    assert rows[0]["best"] == "26.50 (step 3)" and rows[1]["best"] == ""
    write_summary(tmp_path, jobs[:1])
    write_summary(tmp_path, jobs)  # a second sweep of the same name keeps the first one's summary aside
    assert len(list(tmp_path.glob("summary-*.csv"))) == 1 and len(list(tmp_path.glob("summary-*.json"))) == 1
    assert [r["job"] for r in json.loads((tmp_path / "summary.json").read_text())] == [3, 1, 4, 0, 2]


def test_a_finished_job_records_its_best_validation_and_says_when_it_fell() -> None:
    from ernerf.apps.runs import FALL_DB, RunRecord
    from ernerf.apps.sweeps import finished_outcome

    best = {"path": "runs/x/head/checkpoints/step0002000.ckpt", "step": 2000, "monitor": "val/psnr", "value": 36.0}
    held = finished_outcome(RunRecord(8000, {"val/psnr": 36.0 - FALL_DB / 2}, None, best))
    assert held == {"step": 8000, "val/psnr": 36.0 - FALL_DB / 2, "val/torso_own_pasted_psnr": None,
                    "best": {"step": 2000, "value": 36.0}, "notes": []}
    fell = finished_outcome(RunRecord(8000, {"val/psnr": 36.0 - 2 * FALL_DB}, None, best))
    assert fell["best"] == {"step": 2000, "value": 36.0}
    assert fell["notes"] == [f"fell {2 * FALL_DB:.1f} dB under its best validation: what follows the run starts from "
                             "that checkpoint (docs/runs.md)"]
    assert finished_outcome(RunRecord(10, {"val/psnr": 20.0}, None, None))["best"] is None  # no checkpoint kept
    assert finished_outcome(None) == {"step": None, "val/psnr": None, "val/torso_own_pasted_psnr": None, "best": None,
                                      "notes": []}
    torso = finished_outcome(RunRecord(10, {"val/psnr": 28.0, "val/torso_own_pasted_psnr": 33.5}, None, None))
    assert torso["val/torso_own_pasted_psnr"] == 33.5


def test_a_sweep_of_torso_runs_ranks_by_the_frames_as_the_video_draws_them(tmp_path: Path, capsys) -> None:
    """Mean-code val/psnr falls as the torso codes learn each frame's body: torso jobs rank by the own-code figure."""
    from ernerf.apps.sweeps import print_summary

    own = "val/torso_own_pasted_psnr"
    torso = [job(0, "finished", 30.0, "10") | {own: 33.0}, job(1, "finished", 29.0, "11") | {own: 34.0},
             job(2, "failed", None, "12") | {own: None}]
    jobs = ranked(torso)
    assert [j["job"] for j in jobs] == [1, 0, 2]
    columns, rows = summary_rows(jobs)
    assert columns.index(own) == columns.index("val/psnr") + 1 and rows[0][own] == "34.00" and rows[2][own] == ""
    print_summary(jobs, tmp_path / "summary.csv")
    assert f"by {own}" in capsys.readouterr().out.replace("\n", "")
    mixed = ranked([job(0, "finished", 30.0, "10") | {own: 33.0}, job(1, "finished", 31.0, "11")])  # a head job too
    assert [j["job"] for j in mixed] == [1, 0]


def test_the_printed_table_names_folders_and_shortens_notes(tmp_path: Path, capsys) -> None:
    from ernerf.apps.sweeps import print_summary

    refused = job(1, "refused", None, "10") | {"error": "runs/x/sweeps/s/head-10 holds a finished stage; to go on: ..."}
    early = job(2, "failed", None, "11") | {"run_dir": "", "error": "ErnerfError: bad encoder"}
    noted = job(0, "finished", 20.0, "12") | {"notes": ["encoder.log2_hashmap_size=12 has no effect: every level fits"]}
    print_summary(ranked([refused, early, noted]), tmp_path / "summary.csv")
    out = capsys.readouterr().out
    assert "head-12" in out and "encoder.log2_hashmap_size=12 has no effect" in out and "every level fits" not in out
    assert "its folder holds a finished stage" in out and "to go on" not in out and "ErnerfError: bad encoder" in out
