"""What a finished training run tells its user: its figures, where its files are, and the commands that come next."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ernerf.apps.runs import FALL_DB, RunRecord, command, last_checkpoint

# Figures shown first, in this order, with their unit; any other val/ figure follows as logged.
SHOWN = {"val/psnr": "dB", "val/ssim": "", "val/lpips": "", "val/lmd": "px"}


def figures_line(metrics: Mapping[str, float]) -> str:
    """`val/psnr 31.42 dB, val/ssim 0.912`: the validation figures of a run (the ones known)."""
    keys = [k for k in SHOWN if k in metrics] + sorted(k for k in metrics if k.startswith("val/") and k not in SHOWN)
    parts = [f"{k} {metrics[k]:.4g}{' ' + SHOWN[k] if SHOWN.get(k) else ''}" for k in keys]
    return ", ".join(parts) or "no validation figures (validation did not run)"


def finished_summary(subject: str, stage: str, run_dir: Path | str, step: int, metrics: Mapping[str, float],
                     next_stages: Sequence[str] = (), best: Mapping[str, Any] | None = None,
                     offers_best: bool = True) -> str:
    """The lines printed when a stage finishes; `next_stages` are the stages that may follow it (none: the last);
    `best`, the checkpoint kept as the best validated one (`RunRecord.best`), offered if the run fell when
    `offers_best` (`RunRecord.offers_best`)."""
    run_dir = Path(run_dir)
    lines = [f"finished {stage} of {subject} at step {step}: {figures_line(metrics)}",
             f"  checkpoint  {last_checkpoint(run_dir)}",
             *fall_warning(subject, run_dir, metrics, best, next_stages, offers_best)]
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


def fall_headline(metrics: Mapping[str, float], best: Mapping[str, Any] | None,
                  offers_best: bool = True) -> str | None:
    """`val/psnr fell to ...` when a run ended FALL_DB or more under the best checkpoint it kept and its stage offers
    that one then (`RunRecord.fall`); None otherwise."""
    drop = RunRecord(None, dict(metrics), None, dict(best) if best else None, offers_best).fall()
    if drop is None:
        return None
    return (f"val/psnr fell to {float(metrics['val/psnr']):.2f} dB by the end, {drop:.1f} dB under the "
            f"{float(best['value']):.2f} dB of the checkpoint kept at step {best.get('step')}")


def fall_warning(subject: str, run_dir: Path, metrics: Mapping[str, float], best: Mapping[str, Any] | None,
                 next_stages: Sequence[str], offers_best: bool = True) -> list[str]:
    """Lines telling that the run fell (`fall_headline`) and that what follows it starts from its best checkpoint,
    with the commands that take the last one instead; for a stage that offers its last checkpoint all the same, a
    note saying so; none otherwise."""
    if not offers_best:
        return kept_last_note(metrics, best)
    headline = fall_headline(metrics, best)
    if headline is None:
        return []
    last = last_checkpoint(run_dir)
    lines = [f"warning: {headline}; later stages, infer.py and evaluate.py start from that one:",
             f"  best        {best['path']}",
             f"  python evaluate.py subject={subject} run={last}   # the last one's figures instead"]
    lines += [f"  {command(subject, name, f'init_from={last}')}   # the {name} stage from the last one"
              for name in next_stages]
    return lines


def kept_last_note(metrics: Mapping[str, float], best: Mapping[str, Any] | None) -> list[str]:
    """For a stage whose validation does not pick what follows it (`stage.offer_best_if_fell: false`): a note when its
    val/psnr ended FALL_DB or more under its best kept checkpoint's, naming that checkpoint; none otherwise."""
    drop = RunRecord(None, dict(metrics), None, dict(best) if best else None).drop()
    if drop is None or drop < FALL_DB:
        return []
    return [f"note: val/psnr ended {drop:.1f} dB under the {float(best['value']):.2f} dB of step {best.get('step')}; "
            "this stage offers its last checkpoint all the same (stage.offer_best_if_fell=false: its validation "
            "does not score what infer.py renders)",
            f"  best        {best['path']}"]
