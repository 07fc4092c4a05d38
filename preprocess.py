"""python preprocess.py video=<path> subject=<name>: raw talking video -> subject dataset."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from ernerf.cli import exit_on_user_error, run_entry_point


@hydra.main(config_path="conf", config_name="preprocess", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    # imported here, not above: the pool's worker processes import this module again (spawn) and need neither
    from ernerf.io.layout import SubjectLayout
    from ernerf.preprocess.pipeline import preprocess_subject

    layout = exit_on_user_error(SubjectLayout.of)(cfg.paths.data_root, cfg.subject)
    exit_on_user_error(preprocess_subject)(cfg.preprocess, layout, video=cfg.video, audio=cfg.audio)


if __name__ == "__main__":
    run_entry_point(main, "preprocess.py")
