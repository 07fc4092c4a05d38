"""Exponential moving average of the trained weights: what validation scores and checkpoints carry.

ER-NeRF evaluates an EMA of its weights too. With Adam at betas (0, 0.99) the current weights move by about one
learning rate per step, so the val PSNR of the current weights swings by up to ~1 dB between scores a few hundred
steps apart (docs/multigpu.md); the average does not.

Only parameters are averaged. The occupancy grid and other buffers are state, not weights: averaging a boolean grid
means nothing, and swapping in a copy taken earlier would march through stale cells. (Lightning's own
`WeightAveraging` callbacks either average buffers or swap stale copies of them back in, hence this one.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
from torch import Tensor

from ernerf.errors import ErnerfError


class EMAWeights(L.Callback):
    """Every `every_n_steps` optimizer steps, and once when training ends: average <- d * average + (1 - d) * weights.

    d = decay, or with `warmup` min(decay, (1 + n) / (10 + n)) after n updates (torch_ema's warm-up, which ER-NeRF
    uses): the first updates follow the weights, so the average does not lag far behind early in training. The
    horizon is then about every_n_steps / (1 - decay) steps (10 / 0.05 = 200 by default). Validation runs with
    the averaged weights swapped in; a checkpoint's `state_dict` holds the average (so `infer.py`,
    `load_from_checkpoint` and the next stage's `init_from` use it) and `ema_current_state` the weights a resumed run
    continues from. Swaps copy in place, so CUDA graphs and compiled code keep their addresses.
    """

    def __init__(self, decay: float = 0.95, every_n_steps: int = 10, warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0 or every_n_steps < 1:
            raise ErnerfError(f"callbacks.ema needs 0 <= decay < 1 and every_n_steps >= 1, got {decay}, {every_n_steps}.")
        self.decay, self.every_n_steps, self.warmup = decay, every_n_steps, warmup
        self.updates = 0
        self.updated_at = -1  # the global step of the last update
        self.names: list[str] = []
        self.average: list[Tensor] | None = None
        self._restored: dict[str, Tensor] | None = None  # averaged weights from a checkpoint, before fit starts

    # ---------------------------------------------------------------- the average
    def _weights(self, pl_module: L.LightningModule) -> list[Tensor]:
        params = dict(pl_module.named_parameters())
        return [params[name].detach() for name in self.names]

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.names = [name for name, p in pl_module.named_parameters() if p.requires_grad]
        weights = self._weights(pl_module)
        restored = self._restored or {}
        self.average = [restored[n].to(w) if n in restored else w.clone() for n, w in zip(self.names, weights)]
        self._restored = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self.average is not None and trainer.global_step % self.every_n_steps == 0:
            self.update(pl_module, trainer.global_step)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The last steps since the last update count too: a run shorter than `every_n_steps` (or one ending between
        updates) would otherwise save an average that has not seen its final weights, or even its start."""
        if self.average is not None and self.updated_at != trainer.global_step:
            self.update(pl_module, trainer.global_step)

    @torch.no_grad()
    def update(self, pl_module: L.LightningModule, step: int) -> None:
        """average <- d * average + (1 - d) * weights (d warming up to `decay`), at global step `step`."""
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates)) if self.warmup else self.decay
        torch._foreach_lerp_(self.average, self._weights(pl_module), 1.0 - decay)
        self.updates, self.updated_at = self.updates + 1, step

    @torch.no_grad()
    def swap(self, pl_module: L.LightningModule) -> None:
        """Exchange the model's weights and the average, in place."""
        for average, weight in zip(self.average, self._weights(pl_module)):
            kept = weight.clone()
            weight.copy_(average)
            average.copy_(kept)

    @contextlib.contextmanager
    def averaged(self, pl_module: L.LightningModule) -> Iterator[None]:
        """The averaged weights in the model for the duration (a no-op before fitting starts)."""
        if self.average is None:
            yield
            return
        self.swap(pl_module)
        try:
            yield
        finally:
            self.swap(pl_module)

    # ---------------------------------------------------------------- validation
    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.average is not None and trainer.state.fn == "fit":
            self.swap(pl_module)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.average is not None and trainer.state.fn == "fit":
            self.swap(pl_module)

    # ---------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self.average is None:
            return
        current = checkpoint["state_dict"]
        checkpoint["ema_current_state"] = current
        checkpoint["ema_updates"] = self.updates
        checkpoint["state_dict"] = {**current, **{n: a.detach().clone() for n, a in zip(self.names, self.average)}}

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        """Resume: the model continues from the current weights, the average from the saved one."""
        current = checkpoint.get("ema_current_state")
        if current is None:
            return  # a checkpoint saved without the average: it starts from the weights
        self._restored = {name: value for name, value in checkpoint["state_dict"].items()}
        self.updates = int(checkpoint.get("ema_updates", 0))
        pl_module.load_state_dict(current)
