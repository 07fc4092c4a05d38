"""At each validation of a torso stage, score a few training frames drawn as the video draws them (`val/torso_own_*`).

The stage's validation renders held-out frames with the mean torso code: a figure that falls as each frame's code
learns where that frame's body is, while what `infer.py` pastes (new speech in the training frames, each with its
own code) gets better (docs/evaluation.md, "The torso's budget and the checkpoint it offers"). These figures follow
what the video shows along the run, so curves, finished.json and a sweep's summary can rank torso runs by it.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch

from ernerf.metrics.image import pasted_figures
from ernerf.picks import evenly_spaced
from ernerf.postprocess.pasteback import paste_weights
from ernerf.rendering.frames import render_validation


class TorsoOwnCodeScore(L.Callback):
    """Logs `val/torso_own_psnr`, `val/torso_own_pasted_psnr` and `val/torso_own_seam_psnr` at each validation:
    `frames` training frames rendered with their own audio window, blink and torso code over the stage's background,
    scored whole, where infer.py's paste takes the render (weighted by its alpha) and at the paste's feathered edge
    (evaluate.py's `torso_own_*`, over fewer frames). A no-op for a system without a torso field."""

    def __init__(self, frames: int = 16) -> None:
        if frames < 1:
            raise ValueError(f"callbacks.torso_own_code.frames is at least 1 (or the callback null), not {frames}")
        self.frames = frames
        self.weights: np.ndarray | None = None  # the paste's alpha of the scored frames, read once

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # At the start: callbacks.ema (before this one among the callbacks) has swapped in the averaged weights that
        # val/psnr scores; at the end it has swapped them out again.
        if not trainer.sanity_checking:
            self.score(trainer, pl_module)

    def score(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Render, score and log the frames with the model's weights as they are."""
        if getattr(pl_module, "torso", None) is None:
            return
        data, store = trainer.datamodule.data, trainer.datamodule.store
        frames = evenly_spaced(data.num_train, self.frames)
        if self.weights is None:
            self.weights = paste_weights(data, frames, data.height, data.width)
        with torch.no_grad():
            rendered = render_validation(pl_module, data, store, frames, progress=False, own_torso=True)
        figures = pasted_figures(rendered.renders, rendered.truths, self.weights)
        for name, value in figures.items():  # every rank renders the same frames with the same weights: the mean
            pl_module.log(f"val/torso_own_{name}", value, sync_dist=True)  # over ranks is each rank's figure
