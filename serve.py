"""python serve.py subject=<name> [stage=<name>] [port=8010]: the trained avatar, live in a browser over WebRTC."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from ernerf.cli import exit_on_user_error, run_entry_point


@hydra.main(config_path="conf", config_name="serve", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    # A busy port or an untrained subject is refused before the model code loads (ernerf/apps/preflight.py).
    from ernerf.apps.preflight import check_serve

    exit_on_user_error(check_serve)(cfg)
    # Imported here, not at the top: serving imports torch, aiortc and Lightning, seconds that --help waits for.
    from ernerf.apps.live import serve_command

    exit_on_user_error(serve_command)(cfg)


if __name__ == "__main__":
    run_entry_point(main, "serve.py", plain_keys={"stage": "stage_name"})
