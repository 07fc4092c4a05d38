"""python evaluate.py subject=<name> [stage=<name>] [run=<run dir or ckpt>]: figures on the held-back frames,
metrics.json, report."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from ernerf.cli import exit_on_user_error, run_entry_point


@hydra.main(config_path="conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    # An untrained subject, a missing file or a bad option is refused before the model code loads
    # (ernerf/apps/preflight.py).
    from ernerf.apps.preflight import check_evaluate

    exit_on_user_error(check_evaluate)(cfg)
    # Imported here, not at the top: evaluation imports torch and Lightning, seconds of imports that --help and a
    # refused command line do without (docs/design/architecture.md).
    from ernerf.apps.evaluation import evaluate_command

    exit_on_user_error(evaluate_command)(cfg)


if __name__ == "__main__":
    run_entry_point(main, "evaluate.py", plain_keys={"stage": "stage_name"})
