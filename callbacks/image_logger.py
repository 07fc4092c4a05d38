"""Validation images: rendering | ground truth | colour-mapped depth, to W&B, TensorBoard and/or a PNG folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from matplotlib import colormaps
from torch import Tensor


def colorize_depth(depth: Tensor, opacity: Tensor | None = None) -> np.ndarray:
    """Depth [H, W] -> uint8 RGB [H, W, 3] (turbo, normalised over the covered pixels; empty pixels black)."""
    d = depth.detach().float().cpu().numpy()
    mask = np.ones_like(d, bool) if opacity is None else opacity.detach().float().cpu().numpy() > 0.5
    lo, hi = (d[mask].min(), d[mask].max()) if mask.any() else (0.0, 1.0)
    rgb = colormaps["turbo"](np.clip((d - lo) / max(hi - lo, 1e-8), 0, 1))[..., :3]
    return (rgb * mask[..., None] * 255).round().astype(np.uint8)


def to_uint8(image: Tensor) -> np.ndarray:
    """Colours in [0, 1] [H, W, 3] -> uint8."""
    return (image.detach().float().clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)


def side_by_side(pred: Tensor, target: Tensor, depth: Tensor, opacity: Tensor | None = None) -> np.ndarray:
    """[H, 3W, 3] uint8: rendering, ground truth, depth."""
    return np.concatenate([to_uint8(pred), to_uint8(target), colorize_depth(depth, opacity)], axis=1)


class ValImageLogger(L.Callback):
    """Log the first `max_images` validation frames at most every `every_n_steps` steps."""

    def __init__(self, every_n_steps: int = 1000, max_images: int = 2, png_dir: str | None = None) -> None:
        self.every_n_steps, self.max_images = every_n_steps, max_images
        self.png_dir = Path(png_dir) if png_dir else None
        self.last_logged_step: int | None = None

    def _due(self, trainer: L.Trainer) -> bool:
        step = trainer.global_step
        return self.last_logged_step == step or self.last_logged_step is None or step - self.last_logged_step >= self.every_n_steps

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        # Under DDP each rank renders its share of the frames: rank 0's images stand for all (one set of files).
        if trainer.sanity_checking or not trainer.is_global_zero or batch_idx >= self.max_images or not self._due(trainer):
            return
        self.last_logged_step = trainer.global_step
        image = side_by_side(outputs["rgb"], batch["rgb"], outputs["depth"], outputs.get("opacity"))
        self.write(trainer, image, f"val/render_{batch_idx}")

    def write(self, trainer: L.Trainer, image: np.ndarray, key: str) -> None:
        """Send one image to every configured sink."""
        step = trainer.global_step
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key=key, images=[image], step=step, caption=["render | ground truth | depth"])
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(key, torch.from_numpy(image), step, dataformats="HWC")
        if self.png_dir is not None:
            self.png_dir.mkdir(parents=True, exist_ok=True)
            path = self.png_dir / f"{key.replace('/', '_')}_step{step:07d}.png"
            cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
