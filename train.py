"""Train a talking head: python train.py stage=head|lips|torso|all subject=<name> [ckpt_path=last] [debug=fast]."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from ernerf.apps.sweep_args import sweep_folder_over_subjects
from ernerf.cli import exit_on_user_error, run_entry_point


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns val/psnr for sweepers (of the last stage trained, for stage=all). In a multirun a
    job that fails or is refused is recorded and the sweep goes on (ernerf.apps.sweeps.sweep_job)."""
    # A busy run folder, a finished stage or a bad option is refused before Lightning loads (ernerf/apps/preflight.py).
    from ernerf.apps.preflight import check_train

    exit_on_user_error(check_train)(cfg)
    # Imported here, not at the top: training imports Lightning, seconds that --help, --cfg and shell completion
    # would otherwise wait for.
    from ernerf.apps.sweeps import sweep_job
    from ernerf.apps.train import train_command

    return exit_on_user_error(sweep_job(train_command))(cfg)


if __name__ == "__main__":
    sys.argv[1:] = sweep_folder_over_subjects(sys.argv[1:])
    run_entry_point(main, "train.py")
