"""Multirun sweeps of train.py: each job's run folder, W&B group and tags, what its swept values change, and the
sweep's summary (docs/sweeps.md)."""

from __future__ import annotations

import csv
import functools
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from ernerf.apps.runs import RunRecord, read_record
from ernerf.apps.sweep_args import parse_overrides
from ernerf.errors import user_error_in

log = logging.getLogger("sweep")

METRIC = "val/psnr"  # what train.py returns to a sweeper and what the summary ranks by (higher is better)
# A torso run's frames as the video draws them (callbacks/torso_own_code.py): a sweep of torso runs ranks by it, as
# the mean-code val/psnr falls while what infer.py pastes gets better (docs/sweeps.md)
OWN_CODE_METRIC = "val/torso_own_pasted_psnr"
JOB_RECORD = "job.json"  # written by each job in its Hydra output folder; the summary gathers them
PRESET_GROUPS = ("experiment", "debug", "ray_guide")  # config groups whose choice tags a run
TABLE_KEY = "encoder.log2_hashmap_size"
MAX_NAME_BYTES = 200  # of a job's run folder name: file systems take 255, and a few more are added beside it


def is_multirun() -> bool:
    """Whether this process runs a job of a Hydra multirun."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def job_swept_values() -> dict[str, Any]:
    """This job's value of each swept key (several values on the command line, or a search space of
    `hydra.sweeper.params`), in the order of its overrides."""
    hydra_cfg = HydraConfig.get()
    given = parse_overrides(sys.argv[1:])
    fixed = {o.key_or_group for o in given if not o.is_sweep_override()}  # a sweeper searches no key given one value
    searched = set(hydra_cfg.sweeper.get("params") or {}) - fixed
    keys = {o.key_or_group for o in given if o.is_sweep_override()} | searched
    return {o.key_or_group: o.value() for o in parse_overrides(hydra_cfg.overrides.task) if o.key_or_group in keys}


def format_value(value: Any) -> str:
    """A swept value as the command line writes it."""
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def job_run_name(stage: str, values: str, num: int) -> str:
    """`<stage>-<values>`; `<stage>-job<num>` without values, or when they would make a name longer than a file
    system takes (a submitit job, whose argv is not the sweep's, names itself from all its overrides)."""
    name = f"{stage}-{values}"
    return name if values and len(name.encode()) <= MAX_NAME_BYTES else f"{stage}-job{num}"


def label_run(cfg: DictConfig) -> None:
    """Tag the run with the presets it was composed with; in a multirun, give each job its own run folder inside the
    sweep's, `<sweep dir>/<stage>-<swept values>`, and its W&B run the sweep's group. Calling it again changes
    nothing."""
    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    presets = [f"{g}={hydra_cfg.runtime.choices[g]}" for g in PRESET_GROUPS if hydra_cfg.runtime.choices.get(g)]
    with open_dict(cfg):
        cfg.tags = [*cfg.tags, *(tag for tag in presets if tag not in cfg.tags)]
        if hydra_cfg.mode != RunMode.MULTIRUN:
            return
        swept = ",".join(f"{k}={format_value(v)}" for k, v in job_swept_values().items())
        sweep_dir = Path(hydra_cfg.sweep.dir)
        cfg.run_name = job_run_name(cfg.stage.name, swept or hydra_cfg.job.override_dirname, hydra_cfg.job.num)
        cfg.run_dir = str(sweep_dir / cfg.run_name)
        cfg.run_group = f"{cfg.subject}-{sweep_dir.name}"


def rerun_arguments() -> list[str]:
    """What a command that a message suggests for this run needs besides subject and stage: in a multirun, the sweep
    and this job's swept values (`-m sweep=<name> key=value ...`), so that it finds the same run folder."""
    if not is_multirun():
        return []
    values = [f"{k}={format_value(v)}" for k, v in job_swept_values().items()]
    return ["-m", f"sweep={Path(HydraConfig.get().sweep.dir).name}", *values]


def overridden_values(cfg: DictConfig, given: Mapping[str, Any], choices: Mapping[str, Any]) -> list[str]:
    """Values given on the command line that the composed config does not hold (something composed after the command
    line replaced them). Hydra applies the command line after the presets, so a preset alone does not do this."""
    notes = []
    for key, value in given.items():
        if isinstance(value, str) and "${" in value:  # an interpolation: the config holds what it resolves to
            continue
        used = choices[key] if key in choices else OmegaConf.select(cfg, key, default=None)
        if OmegaConf.is_config(used):
            used = OmegaConf.to_container(used, resolve=True)
        if used != value:
            notes.append(f"{key}={format_value(value)} is overridden: the run uses {format_value(used)}")
    return notes


def hash_table_notes(cfg: DictConfig, swept: Mapping[str, Any]) -> list[str]:
    """A swept `encoder.log2_hashmap_size` at or above the size the encoder's finest level needs has no effect: every
    level already has a row per grid vertex, so larger tables build the same encoder."""
    if TABLE_KEY not in swept:
        return []
    import torch  # here: the sweep's command line is read before Hydra starts, and --help must not wait for torch

    from ernerf.encoders.hashgrid import HashGridEncoder  # here too: train.py's checks import this module first

    with torch.device("meta"):  # the grids' shapes without allocating their tables
        encoder = instantiate(cfg.encoder, backend="torch")
    grids = [m for m in encoder.modules() if isinstance(m, HashGridEncoder)]
    if not grids:
        return []
    finest, dim = max(((g.resolutions[-1], g.input_dim) for g in grids), key=lambda rd: rd[0] ** rd[1])
    needed = math.ceil(math.log2(finest**dim))
    size = int(cfg.encoder.log2_hashmap_size)
    if size < needed:
        return []
    return [f"{TABLE_KEY}={size} has no effect: every level of the encoder fits in 2^{needed} rows (the finest has "
            f"{finest}^{dim} entries), so every value from {needed} up builds the same encoder"]


def ineffective_values(cfg: DictConfig) -> list[str]:
    """This job's swept values that do not change what it trains, one line each."""
    swept = job_swept_values()
    return [*overridden_values(cfg, swept, HydraConfig.get().runtime.choices), *hash_table_notes(cfg, swept)]


def final_run_dir(cfg: DictConfig) -> Path:
    """The run folder of the job's last stage: its own, or for `stage=all` the last stage's beside it."""
    chain = cfg.stage.get("chain")
    if not chain:
        return Path(cfg.run_dir)
    return Path(cfg.run_dir).parent / (chain[-1] + str(cfg.run_name)[len(str(cfg.stage.name)):])


def sweep_job(task: Callable[[DictConfig], float | None]) -> Callable[[DictConfig], float | None]:
    """Outside a multirun, `task` itself. In one, a job of the sweep: it warns of swept values without effect, records
    what became of it in `job.json` (finished, failed or refused) and, when it fails or is refused, says why and lets
    the sweep go on (returning None, which a sweeper such as Optuna counts as a failed trial)."""

    @functools.wraps(task)
    def job(cfg: DictConfig) -> float | None:
        if not is_multirun():
            return task(cfg)
        # what a job stopped from outside (Ctrl-C) leaves; the sweep ends with it
        swept = {k: format_value(v) for k, v in job_swept_values().items()}
        record = failed_job_record(HydraConfig.get().job.num, swept, "stopped before it ended")
        try:
            label_run(cfg)
            run_dir = final_run_dir(cfg)
            record.update(run_dir=str(run_dir), notes=ineffective_values(cfg))
            for note in record["notes"]:
                log.warning(note)
            value = task(cfg)
            outcome = finished_outcome(read_record(run_dir))
            record.update(status="finished", error=None, step=outcome["step"], best=outcome["best"])
            record[METRIC] = outcome[METRIC]
            record["notes"] += outcome["notes"]
            return value
        except Exception as exc:  # any error of one job ends that job, not the sweep
            user_error = user_error_in(exc)
            if user_error is not None:
                print(f"error: {user_error}", file=sys.stderr, flush=True)
                record.update(status="refused", error=str(user_error))
            else:
                log.exception("job %s failed; the sweep goes on", record["job"])
                record.update(error=f"{type(exc).__name__}: {exc}")
            return None
        finally:
            write_job_record(Path(HydraConfig.get().runtime.output_dir), record)

    return job


def failed_job_record(num: int, swept: dict[str, str], error: str) -> dict[str, Any]:
    """A job's record (`JOB_RECORD`) as it stands until the job finishes: failed, with `error`."""
    return {"job": num, "status": "failed", METRIC: None, OWN_CODE_METRIC: None, "best": None, "swept": swept,
            "notes": [], "run_dir": "", "error": error, "step": None}


def finished_outcome(finished: RunRecord | None) -> dict[str, Any]:
    """What a job's record takes from its run's finished.json: the last step, val/psnr (and a torso run's own-code
    figure) at the end, the checkpoint kept for the best val/psnr ({"step", "value"}) and, when the run fell from it, a
    note saying so."""
    if finished is None:
        return {"step": None, METRIC: None, OWN_CODE_METRIC: None, "best": None, "notes": []}
    value = finished.best_psnr()
    kept = None if value is None else {"step": finished.best.get("step"), "value": value}
    drop = finished.fall()
    notes = [] if drop is None else [f"fell {drop:.1f} dB under its best validation: what follows the run starts from "
                                     "that checkpoint (docs/runs.md)"]
    return {"step": finished.step, METRIC: finished.metrics.get(METRIC),
            OWN_CODE_METRIC: finished.metrics.get(OWN_CODE_METRIC), "best": kept, "notes": notes}


def write_job_record(job_dir: Path, record: dict[str, Any]) -> None:
    """Write `record` as the job's `JOB_RECORD` in its Hydra folder, stamped with the time it ended."""
    record["finished_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / JOB_RECORD).write_text(json.dumps(record, indent=1))


def lost_job_record(job_dir: Path, num: int, swept: dict[str, str], error: str) -> None:
    """The record of a job whose process died before it could write its own (hydra/launcher=local_gpus writes it)."""
    write_job_record(job_dir, failed_job_record(num, swept, error))


def read_jobs(sweep_dir: Path, since: float = 0.0) -> list[dict[str, Any]]:
    """The job records of a sweep folder written since `since` (a named sweep's folder may hold an earlier sweep's)."""
    paths = [p for p in sweep_dir.glob(f"**/{JOB_RECORD}") if p.stat().st_mtime >= since]
    return [json.loads(p.read_text()) for p in paths]


def scored(job: dict[str, Any], metric: str) -> bool:
    """Whether a job finished with a finite `metric`."""
    value = job.get(metric)
    return job["status"] == "finished" and value is not None and math.isfinite(value)


def ranking_metric(jobs: list[dict[str, Any]]) -> str:
    """What the summary ranks by: the own-code figure when every job with a val/psnr has one (a sweep of torso runs),
    else val/psnr."""
    with_psnr = [job for job in jobs if scored(job, METRIC)]
    return OWN_CODE_METRIC if with_psnr and all(scored(job, OWN_CODE_METRIC) for job in with_psnr) else METRIC


def ranked(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Jobs best first: finished ones by `ranking_metric` (highest first), then finished without it, then the
    others."""
    metric = ranking_metric(jobs)

    def order(job: dict[str, Any]) -> tuple:
        ranks = scored(job, metric)
        return (job["status"] != "finished", not ranks, -job[metric] if ranks else 0.0, job["job"])

    return [{"rank": i + 1, **job} for i, job in enumerate(sorted(jobs, key=order))]


def summary_rows(jobs: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, str]]]:
    """(columns, rows) of the summary: rank, job, status, val/psnr at the end, the best validation kept (its value and
    step), step, each swept key, notes, run folder, error."""
    keys = list(dict.fromkeys(k for job in jobs for k in job["swept"]))
    own = [OWN_CODE_METRIC] if any(job.get(OWN_CODE_METRIC) is not None for job in jobs) else []
    columns = ["rank", "job", "status", METRIC, *own, "best", "step", *keys, "notes", "run_dir", "error"]
    rows = []
    for job in jobs:
        value, best = job.get(METRIC), job.get("best")  # records of sweeps before "best" existed lack it
        row = {"rank": str(job["rank"]), "job": str(job["job"]), "status": job["status"],
               METRIC: "" if value is None else f"{value:.2f}",
               "best": "" if not best else f"{best['value']:.2f} (step {best['step']})",
               "step": "" if job["step"] is None else str(job["step"]),
               "notes": "; ".join(job["notes"]), "run_dir": job["run_dir"], "error": job["error"] or ""}
        if own:
            value = job.get(OWN_CODE_METRIC)
            row[OWN_CODE_METRIC] = "" if value is None else f"{value:.2f}"
        rows.append(row | {k: job["swept"].get(k, "") for k in keys})
    return columns, rows


def write_summary(sweep_dir: Path, jobs: list[dict[str, Any]]) -> Path:
    """summary.csv (the table) and summary.json (the job records, ranked) in the sweep folder, an earlier sweep's of the
    same name renamed with its time; returns the CSV."""
    columns, rows = summary_rows(jobs)
    for earlier in [sweep_dir / "summary.csv", sweep_dir / "summary.json"]:  # of an earlier sweep of the same name
        if earlier.exists():
            stamp = time.strftime("%Y-%m-%d_%H-%M-%S", time.localtime(earlier.stat().st_mtime))
            earlier.rename(earlier.with_name(f"{earlier.stem}-{stamp}{earlier.suffix}"))
    with open(sweep_dir / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    (sweep_dir / "summary.json").write_text(json.dumps(jobs, indent=1))
    return sweep_dir / "summary.csv"


def print_summary(jobs: list[dict[str, Any]], csv_path: Path) -> None:
    """The summary as a table on the terminal: run folders by name in the sweep folder, each note up to its colon and
    a failure's first clause (the CSV and JSON hold them whole)."""
    from rich.console import Console
    from rich.table import Table

    columns, rows = summary_rows(jobs)
    shown = [c for c in columns if c not in ("run_dir", "error", "notes")]
    table = Table(title=f"sweep {csv_path.parent} (by {ranking_metric(jobs)}, best first)")
    for column in [*shown, "run folder", "notes"]:
        table.add_column(column, overflow="fold")
    styles = {"finished": None, "failed": "red", "refused": "yellow"}
    for job, row in zip(jobs, rows):
        notes = [note.split(":")[0] for note in job["notes"]]
        if job["error"]:
            first = job["error"].split(";")[0]
            notes.append(first.replace(job["run_dir"], "its folder") if job["run_dir"] else first)
        table.add_row(*(row[c] for c in shown), Path(job["run_dir"]).name if job["run_dir"] else "", "; ".join(notes),
                      style=styles.get(job["status"]))
    console = Console(width=max(Console().width, 160))
    console.print(table)
    console.print(f"summary: {csv_path} and {csv_path.with_suffix('.json')}")


class SweepSummary(Callback):
    """Hydra callback (`hydra.callbacks` in conf/train.yaml): at the end of a multirun, rank its jobs by val/psnr,
    print the table and write it into the sweep folder. The sweep exits with status 1 when a job did not finish."""

    def __init__(self) -> None:
        self.started = 0.0

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = time.time() - 1.0  # file times may be coarser than the clock

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = ranked(read_jobs(sweep_dir, self.started))
        if not jobs:
            return
        print_summary(jobs, write_summary(sweep_dir, jobs))
        unfinished = [j for j in jobs if j["status"] != "finished"]
        if unfinished:
            print(f"{len(unfinished)} of {len(jobs)} jobs did not finish: "
                  + ", ".join(f"#{j['job']} {j['status']}" for j in unfinished), file=sys.stderr)
            sys.exit(1)
