"""python infer.py subject=<name> audio=<file>: a trained avatar speaks new audio -> result.mp4."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from ernerf.errors import ErnerfError


def print_summary(result) -> None:
    """Tell the user where every output went and how fast it ran."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    table = Table(title=f"{result.num_frames} frames ({result.num_frames / 25:.1f} s), stage {result.stage}")
    table.add_column("output")
    table.add_column("path")
    for kind, path in result.outputs.items():
        table.add_row(kind, str(path))
    table.add_row("checkpoint", str(result.checkpoint))
    console.print(table)
    console.print(f"render {result.render_fps:.1f} frames/s; end to end "
                  f"{result.seconds_per_output_second:.2f} s per output second ({result.seconds_total:.1f} s)")


@hydra.main(config_path="conf", config_name="infer", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from ernerf.inference import infer_from_config

    try:
        result = infer_from_config(cfg)
    except ErnerfError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print_summary(result)


if __name__ == "__main__":
    main()
