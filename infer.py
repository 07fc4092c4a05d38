"""python infer.py subject=<name> audio=<file> | text="..." [stage=<name>]: a trained avatar speaks -> result.mp4."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from ernerf.cli import exit_on_user_error, run_entry_point


@hydra.main(config_path="conf", config_name="infer", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    # A missing audio file, an untrained subject or a bad option is refused before the model code loads
    # (ernerf/apps/preflight.py).
    from ernerf.apps.preflight import check_infer

    exit_on_user_error(check_infer)(cfg)
    # Imported here, not at the top: inference imports torch and Lightning, seconds of imports that --help and a
    # refused command line do without (docs/design/architecture.md).
    from ernerf.apps.inference import infer_command

    exit_on_user_error(infer_command)(cfg)


if __name__ == "__main__":
    run_entry_point(main, "infer.py", plain_keys={"stage": "stage_name"}, free_text=("text",))
