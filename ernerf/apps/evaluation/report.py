"""What an evaluation leaves: metrics.json, the PNG figures and index.html, the `test/<name>` figures in the run's
own loggers, and the summary printed by evaluate.py."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from rich.console import Console

from ernerf.apps.evaluation.figures import Findings
from ernerf.apps.evaluation.frames import EvalTarget, Rendered
from ernerf.loggers import AppendingCSVLogger
from ernerf.apps.evaluation.regions import RegionErrors
from ernerf.picks import evenly_spaced
from ernerf.metrics.regions import REGIONS
from ernerf.metrics.report import frame_grid, mouth_curves, psnr_curve, region_figure, write_index

log = logging.getLogger(__name__)

NOT_COMPARABLE = ("Figures depend on the clip, its resolution, crop and split: compare runs of the same subject, "
                  "not with numbers published on other videos.")


@dataclass
class EvalResult:
    """Where the evaluation wrote its outputs, and the metrics.json content."""

    out_dir: Path
    report: dict[str, Any]
    files: dict[str, Path]


@dataclass(frozen=True)
class Source:
    """What made the evaluated frames, as metrics.json names it: a checkpoint of a stage at a step, or (renders=) a
    folder of frames read from files, which has neither a stage nor a step of ours (null in metrics.json)."""

    checkpoint: Path | None
    stage: str | None
    step: int | None
    renders: Path | None = None

    @classmethod
    def of(cls, target: EvalTarget, step: int) -> Source:
        """A checkpoint evaluated at its step."""
        return cls(target.checkpoint, target.stage, step)

    @classmethod
    def folder(cls, renders: Path) -> Source:
        """Frames read from a folder."""
        return cls(None, None, None, renders)

    @property
    def label(self) -> str:
        """What the summary and index.html say was evaluated."""
        return f"frames read from {self.renders}" if self.renders else f"{self.stage}, step {self.step}"

    @property
    def logged_step(self) -> int:
        """The step the loggers get: the checkpoint's; 0 for frames read from files."""
        return self.step if self.step is not None else 0


def build_report(subject: str, source: Source, rendered: Rendered, found: Findings,
                 cross_audio: Mapping[str, Path]) -> dict[str, Any]:
    """The content of metrics.json."""
    names = list(found.values) + [n for n in found.unavailable if n not in found.values]
    return {
        "subject": subject, "checkpoint": source.checkpoint and str(source.checkpoint),
        "renders": source.renders and str(source.renders), "stage": source.stage, "step": source.step,
        "evaluated": source.label,
        "frames": {"validation": rendered.frames.tolist(), "height": int(rendered.renders.shape[1]),
                   "width": int(rendered.renders.shape[2]), "render_seconds": round(rendered.seconds, 2)},
        "metrics": {n: found.values.get(n, "unavailable") for n in names},
        "unavailable": found.unavailable,
        "per_frame": found.curves,
        "cross_audio": {name: str(path) for name, path in cross_audio.items()},  # figure cross_sync_audio_corr_<name>
        "logged_to": [], "logger_keys": "test/<metric>", "note": NOT_COMPARABLE,
    }


def write_outputs(out_dir: Path, report: dict[str, Any], rendered: Rendered, found: Findings,
                  report_frames: int, regions: RegionErrors | None = None) -> dict[str, Path]:
    """metrics.json, the PNG figures and index.html."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"metrics": out_dir / "metrics.json"}
    files["metrics"].write_text(json.dumps(report, indent=2))
    picks = evenly_spaced(len(rendered.frames), report_frames)
    files["grid"] = frame_grid(out_dir / "frames.png", rendered.truths[picks], rendered.renders[picks],
                                       rendered.frames[picks])
    files["psnr"] = psnr_curve(out_dir / "psnr.png", rendered.frames, found.curves["psnr"])
    files["mouth"] = mouth_curves(out_dir / "mouth.png", rendered.frames, found.curves, report["cross_audio"])
    if regions is not None and regions.error_map is not None:
        files["regions"] = region_figure(out_dir / "regions.png", regions.error_map, regions.labels, found.values,
                                         REGIONS)
    figures = [files[k] for k in ("grid", "regions", "psnr", "mouth") if k in files]
    files["html"] = write_index(out_dir / "index.html", report, figures)
    return files


def run_loggers(run_dir: Path | None, out_dir: Path, wandb_project: str = "ernerf") -> list[Any]:
    """Lightning loggers writing into the run's own TensorBoard / CSV / W&B (offline) records; else a CSV in out_dir."""
    loggers: list[Any] = []
    if run_dir is not None and (run_dir / "tensorboard").is_dir():
        loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="", default_hp_metric=False))
    if run_dir is not None and (run_dir / "csv").is_dir():  # its own version, kept apart from the training's rows
        loggers.append(AppendingCSVLogger(save_dir=str(run_dir), name="csv", version="test"))
    runs = sorted((run_dir / "wandb").glob("*run-*-*")) if run_dir is not None and (run_dir / "wandb").is_dir() else []
    if runs:
        run_id = runs[-1].name.rsplit("-", 1)[1]
        loggers.append(WandbLogger(project=wandb_project, id=run_id, resume="allow", offline=True, save_dir=str(run_dir)))
    return loggers or [CSVLogger(save_dir=str(out_dir), name="csv", version="")]


def log_metrics(loggers: list[Any], values: dict[str, float], step: int) -> list[str]:
    """Log `test/<name>` to every logger; return where they went (or why a logger failed)."""
    metrics = {f"test/{k}": float(v) for k, v in values.items() if math.isfinite(v)}
    places = []
    for logger in loggers:
        where = f"{type(logger).__name__}: {getattr(logger, 'log_dir', None) or logger.save_dir}"
        try:
            logger.log_metrics(metrics, step=step)
            logger.finalize("success")
            if type(logger).__name__ == "WandbLogger":
                logger.experiment.finish()  # flush the offline run now, not at interpreter exit
        except Exception as exc:  # noqa: BLE001 - a logger is a side channel: metrics.json is already written
            log.warning("could not log to %s: %s", where, exc)
            where += f" (failed: {exc})"
        places.append(where)
    return places


def print_summary(result: EvalResult) -> None:
    """Every figure (or why it is unavailable) and where the outputs went."""
    console = Console(soft_wrap=True)
    report = result.report
    for warning in report.get("warnings", []):
        console.print(f"[yellow]warning:[/yellow] {warning}")
    console.print(f"{report['subject']} ({report['evaluated']}): {len(report['frames']['validation'])} validation "
                  "frames", style="bold", markup=False, highlight=False)  # a folder's name may hold [brackets]
    width = max([22, *map(len, report["metrics"])])  # per-source names (cross_sync_audio_corr_<stem>) run longer
    for name, value in report["metrics"].items():
        shown = f"{value:.4f}" if isinstance(value, float) else f"{value}: {report['unavailable'].get(name, '')}"
        console.print(f"  {name:<{width}} {shown}", markup=False, highlight=False)
    seconds = report.get("seconds", {})
    if seconds:
        phases = ", ".join(f"{name} {s:.0f} s" for name, s in seconds.items() if name != "total")
        console.print(f"  took {seconds['total']:.0f} s: {phases}", markup=False, highlight=False)
    for kind, path in result.files.items():
        console.print(f"  {kind:<10} {path}", markup=False, highlight=False)
    for place in report["logged_to"]:
        console.print(f"  logged     {place}", markup=False, highlight=False)
