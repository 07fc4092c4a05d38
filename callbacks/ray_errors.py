"""Feed each training step's per-ray error back to the data module's ray sampler (error-guided sampling)."""

from __future__ import annotations

from typing import Any, Protocol

import lightning as L
from torch import Tensor

from datamodules.samplers import RaySampler


class SampledFrames(Protocol):
    """What this callback reads of the Trainer's data module (SubjectDataModule)."""

    sampler: RaySampler

    @property
    def frame_size(self) -> tuple[int, int]:
        """(height, width) of the training frames."""


def ray_errors(outputs: dict[str, Any]) -> Tensor:
    """Squared colour error of each ray of a step's outputs, averaged over the channels: [N]."""
    return (outputs["rgb"].detach().float() - outputs["target"].float()).square().mean(-1)


class RayErrorFeedback(L.Callback):
    """After each training step, the rays' errors go to `datamodule.sampler.observe` when the sampler learns from
    them (an error map); otherwise this does nothing. The model only reports which pixels of which frame it trained on
    (its step outputs `pixel_index`, `frame_index`): it knows nothing of samplers. The update is device work queued
    behind the step, with no host sync, so it also runs beside a CUDA-graphed step."""

    def __init__(self) -> None:
        self.datamodule: SampledFrames | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        datamodule = trainer.datamodule
        sampler = getattr(datamodule, "sampler", None)
        self.datamodule = datamodule if sampler is not None and sampler.learns_from_errors else None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.datamodule is None or not isinstance(outputs, dict) or "pixel_index" not in outputs:
            return
        height, width = self.datamodule.frame_size
        self.datamodule.sampler.observe(outputs["frame_index"], outputs["pixel_index"], ray_errors(outputs),
                                        height, width)
