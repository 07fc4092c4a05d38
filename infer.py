"""python infer.py subject=<name> audio=<file>: a trained avatar speaks new audio -> result.mp4."""

from __future__ import annotations

from typing import TYPE_CHECKING

import hydra
from omegaconf import DictConfig

from ernerf.cli import exit_on_user_error, run_entry_point

if TYPE_CHECKING:
    from ernerf.apps.inference import InferenceResult


def print_summary(result: InferenceResult) -> None:
    """Tell the user where every output went and how fast it ran."""
    from rich.console import Console

    console = Console(soft_wrap=True)  # paths are printed whole, never cut, so they can be copied
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    console.print(f"[bold]{result.num_frames} frames ({result.num_frames / 25:.1f} s), stage {result.stage}[/bold]")
    for kind, path in [*result.outputs.items(), ("checkpoint", result.checkpoint)]:
        console.print(f"  {kind:<10} {path}", markup=False, highlight=False)
    console.print(f"render {result.render_fps:.1f} frames/s; end to end "
                  f"{result.seconds_per_output_second:.2f} s per output second ({result.seconds_total:.1f} s)")


@hydra.main(config_path="conf", config_name="infer", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from ernerf.apps.inference import infer_from_config

    print_summary(exit_on_user_error(infer_from_config)(cfg))


if __name__ == "__main__":
    run_entry_point(main, "infer.py")
