"""python evaluate.py subject=<name> [run=<run dir or ckpt>]: figures on the held-back frames, metrics.json, report."""

from __future__ import annotations

from typing import TYPE_CHECKING

import hydra
from omegaconf import DictConfig

from ernerf.cli import exit_on_user_error, run_entry_point

if TYPE_CHECKING:
    from ernerf.apps.evaluation import EvalResult


def print_summary(result: EvalResult) -> None:
    """Every figure (or why it is unavailable) and where the outputs went."""
    from rich.console import Console

    console = Console(soft_wrap=True)
    report = result.report
    for warning in report.get("warnings", []):
        console.print(f"[yellow]warning:[/yellow] {warning}")
    console.print(f"[bold]{report['subject']} ({report['stage']}, step {report['step']}): "
                  f"{len(report['frames']['validation'])} validation frames[/bold]")
    for name, value in report["metrics"].items():
        shown = f"{value:.4f}" if isinstance(value, float) else f"{value}: {report['unavailable'].get(name, '')}"
        console.print(f"  {name:<22} {shown}", markup=False, highlight=False)
    for kind, path in result.files.items():
        console.print(f"  {kind:<10} {path}", markup=False, highlight=False)
    for place in report["logged_to"]:
        console.print(f"  logged     {place}", markup=False, highlight=False)


@hydra.main(config_path="conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from ernerf.apps.evaluation import evaluate_from_config

    print_summary(exit_on_user_error(evaluate_from_config)(cfg))


if __name__ == "__main__":
    run_entry_point(main, "evaluate.py")
