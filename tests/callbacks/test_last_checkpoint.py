"""last.ckpt follows the run, not its best validation: a run stopped after its validation figure fell resumes from
where it was (Lightning >= 2.5 rewrites a monitored callback's last.ckpt only when a new best is kept)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

CALLBACKS = Path(__file__).parents[2] / "conf" / "callbacks" / "default.yaml"


class FallingRun(L.LightningModule):
    """One weight; its validation figure falls at every validation after the first."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.validations = 0

    def training_step(self, batch, batch_idx):
        return (self.weight - 1).square().sum()

    def validation_step(self, batch, batch_idx):
        self.log("val/psnr", 30.0 - self.validations)

    def on_validation_epoch_end(self) -> None:
        self.validations += 1

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.zeros(64, 1), batch_size=1)

    def val_dataloader(self):
        return torch.utils.data.DataLoader(torch.zeros(1, 1), batch_size=1)


def checkpoint_callbacks(run_dir: Path, interval: int) -> list:
    """The run's checkpoint callbacks as conf/callbacks/default.yaml builds them (train.py instantiates each entry)."""
    cfg = OmegaConf.create({"run_dir": str(run_dir), "trainer": {"val_check_interval": interval},
                            "callbacks": OmegaConf.load(CALLBACKS)})
    return [instantiate(cfg.callbacks[name]) for name in ("checkpoint", "last_checkpoint")]


def test_last_checkpoint_is_the_latest_validated_step_while_the_best_is_kept_beside_it(tmp_path: Path) -> None:
    best, last = checkpoint_callbacks(tmp_path, interval=2)
    trainer = L.Trainer(max_steps=6, val_check_interval=2, callbacks=[best, last], logger=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(FallingRun())
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert saved["global_step"] == 6  # the step the run was at, not the step of its best validation (2)
    assert trainer.checkpoint_callback is best and Path(best.best_model_path).name == "step0000002.ckpt"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.ckpt", "step0000002.ckpt"]
