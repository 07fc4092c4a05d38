"""Validation images: the rendering, the ground truth and the colour-mapped depth with its scale, as three panels
of each frame in W&B and TensorBoard, and side by side in a PNG folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from torch import Tensor

from ernerf.postprocess.depth import depth_range, depth_with_scale
from ernerf.rendering.frames import to_uint8

PANELS = ("render", "truth", "depth")  # keys `val_images/<i>_<panel>`: a frame's three panels sort together


def covered_depth(depth: Tensor, opacity: Tensor | None) -> np.ndarray:
    """Depth [H, W] where the rendering covers the pixel (opacity above a half), 0 (nothing rendered) elsewhere."""
    d = depth.detach().float().cpu().numpy()
    return d if opacity is None else np.where(opacity.detach().float().cpu().numpy() > 0.5, d, 0.0)


def val_panels(pred: Tensor, target: Tensor, depth: Tensor,
               opacity: Tensor | None = None) -> tuple[dict[str, np.ndarray], tuple[float, float]]:
    """({render, truth, depth} uint8 RGB panels, the depth's (near, far)): the depth coloured between the frame's own
    near and far, with a colour bar."""
    d = covered_depth(depth, opacity)
    near, far = depth_range(d)
    return {"render": to_uint8(pred), "truth": to_uint8(target), "depth": depth_with_scale(d, near, far)}, (near, far)


def side_by_side(panels: dict[str, np.ndarray]) -> np.ndarray:
    """[H, 2W + depth panel, 3] uint8: rendering, ground truth, depth."""
    return np.concatenate([panels[name] for name in PANELS], axis=1)


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
        panels, (near, far) = val_panels(outputs["rgb"], batch["rgb"], outputs["depth"], outputs.get("opacity"))
        captions = {"render": "render", "truth": "ground truth",
                    "depth": f"depth from {near:.3f} (red) to {far:.3f} (blue)"}
        for name, image in panels.items():
            self.send(trainer, f"val_images/{batch_idx}_{name}", image, captions[name])
        self.save_png(trainer, f"frame{batch_idx}", side_by_side(panels))

    def write(self, trainer: L.Trainer, image: np.ndarray, key: str) -> None:
        """Send one image to every configured sink."""
        self.send(trainer, key, image, key)
        self.save_png(trainer, key.replace("/", "_"), image)

    def send(self, trainer: L.Trainer, key: str, image: np.ndarray, caption: str) -> None:
        """One uint8 RGB image [H, W, 3] to the W&B and TensorBoard loggers, at the current step."""
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key=key, images=[image], step=trainer.global_step, caption=[caption])
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(key, torch.from_numpy(image), trainer.global_step, dataformats="HWC")

    def save_png(self, trainer: L.Trainer, name: str, image: np.ndarray) -> None:
        """`<png_dir>/<name>_step<step>.png`, when a PNG folder is configured."""
        if self.png_dir is not None:
            self.png_dir.mkdir(parents=True, exist_ok=True)
            path = self.png_dir / f"{name}_step{trainer.global_step:07d}.png"
            cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
