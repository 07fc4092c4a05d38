"""What a finished training run tells its user: its figures, where its files are, and the commands that come next."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ernerf.apps.runs import command, last_checkpoint

# Figures shown first, in this order, with their unit; any other val/ figure follows as logged.
SHOWN = {"val/psnr": "dB", "val/ssim": "", "val/lpips": "", "val/lmd": "px"}
# A final val/psnr this far under the best kept checkpoint's is a run that fell, not the noise between evaluations
# (a few tenths of a dB along one run): the user is told, and given that checkpoint (docs/runs.md).
FALL_DB = 1.0


def figures_line(metrics: Mapping[str, float]) -> str:
    """`val/psnr 31.42 dB, val/ssim 0.912`: the validation figures of a run (the ones known)."""
    keys = [k for k in SHOWN if k in metrics] + sorted(k for k in metrics if k.startswith("val/") and k not in SHOWN)
    parts = [f"{k} {metrics[k]:.4g}{' ' + SHOWN[k] if SHOWN.get(k) else ''}" for k in keys]
    return ", ".join(parts) or "no validation figures (validation did not run)"


def finished_summary(subject: str, stage: str, run_dir: Path | str, step: int, metrics: Mapping[str, float],
                     next_stages: Sequence[str] = (), best: Mapping[str, Any] | None = None) -> str:
    """The lines printed when a stage finishes; `next_stages` are the stages that may follow it (none: the last);
    `best`, the checkpoint kept as the best validated one (`RunRecord.best`)."""
    run_dir = Path(run_dir)
    lines = [f"finished {stage} of {subject} at step {step}: {figures_line(metrics)}",
             f"  checkpoint  {last_checkpoint(run_dir)}", *fall_warning(subject, metrics, best, next_stages)]
    if (run_dir / "csv" / "metrics.csv").is_file():
        lines.append(f"  metrics     {run_dir / 'csv' / 'metrics.csv'}")
    if (run_dir / "val_images").is_dir():
        lines.append(f"  images      {run_dir / 'val_images'}")
    lines.append("next:")
    for name in next_stages:
        lines.append(f"  {command(subject, name)}   # train the {name} stage from this one")
    lines.append(f"  python infer.py subject={subject} stage={stage} audio=<speech.wav>   # make it say something")
    lines.append(f"  python evaluate.py subject={subject} stage={stage}   # its figures on the held-back frames")
    return "\n".join(lines)


def fall_headline(metrics: Mapping[str, float], best: Mapping[str, Any] | None) -> str | None:
    """`val/psnr fell to ...` when a run ended FALL_DB or more under the best checkpoint it kept; None otherwise."""
    if not best or best.get("monitor") != "val/psnr" or "val/psnr" not in metrics:
        return None
    end, kept = float(metrics["val/psnr"]), float(best["value"])
    if kept - end < FALL_DB:
        return None
    # ModelCheckpoint ranks a checkpoint by the last validation before it was saved
    return (f"val/psnr fell to {end:.2f} dB by the end, {kept - end:.1f} dB under the {kept:.2f} dB of the validation "
            f"before the checkpoint kept at step {best.get('step')}")


def fall_warning(subject: str, metrics: Mapping[str, float], best: Mapping[str, Any] | None,
                 next_stages: Sequence[str]) -> list[str]:
    """Lines telling that the run fell (`fall_headline`), with the commands that start from its best checkpoint
    instead of the last; none otherwise."""
    headline = fall_headline(metrics, best)
    if headline is None:
        return []
    path = best["path"]
    lines = [f"warning: {headline}; later stages and infer.py start from the last one unless told:",
             f"  best        {path}",
             f"  python evaluate.py subject={subject} run={path}   # that checkpoint's figures"]
    lines += [f"  {command(subject, name, f'init_from={path}')}   # the {name} stage from it" for name in next_stages]
    return lines
