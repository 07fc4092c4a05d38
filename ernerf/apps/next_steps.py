"""What a finished training run tells its user: its figures, where its files are, and the commands that come next."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from ernerf.apps.runs import command, last_checkpoint

# Figures shown first, in this order, with their unit; any other val/ figure follows as logged.
SHOWN = {"val/psnr": "dB", "val/ssim": "", "val/lpips": "", "val/lmd": "px"}


def figures_line(metrics: Mapping[str, float]) -> str:
    """`val/psnr 31.42 dB, val/ssim 0.912`: the validation figures of a run (the ones known)."""
    keys = [k for k in SHOWN if k in metrics] + sorted(k for k in metrics if k.startswith("val/") and k not in SHOWN)
    parts = [f"{k} {metrics[k]:.4g}{' ' + SHOWN[k] if SHOWN.get(k) else ''}" for k in keys]
    return ", ".join(parts) or "no validation figures (validation did not run)"


def finished_summary(subject: str, stage: str, run_dir: Path | str, step: int, metrics: Mapping[str, float],
                     next_stages: Sequence[str] = ()) -> str:
    """The lines printed when a stage finishes; `next_stages` are the stages that may follow it (none: the last)."""
    run_dir = Path(run_dir)
    lines = [f"finished {stage} of {subject} at step {step}: {figures_line(metrics)}",
             f"  checkpoint  {last_checkpoint(run_dir)}"]
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
