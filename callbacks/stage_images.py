"""Stage images: rendered lip patches next to the truth (lips stage), torso alpha of validation frames (torso stage)."""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch

from callbacks.image_logger import ValImageLogger
from ernerf.rendering.frames import to_uint8


def upscaled(image: np.ndarray, min_size: int = 128) -> np.ndarray:
    """Nearest-neighbour enlargement so small crops stay readable in the logger: [h, w, 3] -> [k h, k w, 3]."""
    k = max(1, min_size // max(image.shape[0], 1))
    return image.repeat(k, axis=0).repeat(k, axis=1)


class LipCropLogger(L.Callback):
    """Every `every_n_steps` steps, log the next lips patch batch: render | ground truth."""

    def __init__(self, every_n_steps: int = 1000, png_dir: str | None = None) -> None:
        self.every_n_steps = every_n_steps
        self.writer = ValImageLogger(png_dir=png_dir)
        self.last_logged_step: int | None = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        shape = outputs.get("patch_shape") if isinstance(outputs, dict) else None
        due = self.last_logged_step is None or trainer.global_step - self.last_logged_step >= self.every_n_steps
        if shape is None or not due or not trainer.is_global_zero or not isinstance(outputs, dict) or "rgb" not in outputs:
            return
        self.last_logged_step = trainer.global_step
        h, w = (int(v) for v in shape)
        pred, target = (x.reshape(h, w, 3) for x in (outputs["rgb"], outputs["target"]))
        self.writer.write(trainer, upscaled(np.concatenate([to_uint8(pred), to_uint8(target)], axis=1)), "train/lips")


class TorsoAlphaLogger(L.Callback):
    """Log the torso alpha of the first `max_images` validation frames as grey images."""

    def __init__(self, every_n_steps: int = 1000, max_images: int = 2, png_dir: str | None = None) -> None:
        self.every_n_steps, self.max_images = every_n_steps, max_images
        self.writer = ValImageLogger(png_dir=png_dir)
        self.last_logged_step: int | None = None

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or batch_idx >= self.max_images or "torso_alpha" not in outputs:
            return
        step = trainer.global_step
        if self.last_logged_step not in (None, step) and step - self.last_logged_step < self.every_n_steps:
            return
        self.last_logged_step = step
        alpha = outputs["torso_alpha"][..., None].expand(-1, -1, 3)
        self.writer.write(trainer, to_uint8(torch.cat([outputs["rgb"], alpha], dim=1)), f"val/torso_alpha_{batch_idx}")
