"""Close the W&B run at the end of each job, so a multirun starts a fresh run per job."""

from __future__ import annotations

import lightning as L


class WandbFinishCallback(L.Callback):
    """Call `wandb.finish()` when fitting ends (no-op when W&B is not in use)."""

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        import sys

        wandb = sys.modules.get("wandb")  # only imported when a WandbLogger was configured
        if wandb is not None and wandb.run is not None:
            wandb.finish()
