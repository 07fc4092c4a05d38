"""Data-parallel recipe (docs/multigpu.md), the part that acts during the fit: per-rank ray seeds and learning rates
scaled to the world size. The step budget per rank is planned where the run is built (`ernerf.chain.run_budget`);
Lightning's per-step SIGTERM broadcast is the execution engine's (ernerf/engine)."""

from __future__ import annotations

import math

import lightning as L
import torch

from ernerf.errors import ErnerfError

LR_RULES = ("none", "sqrt", "linear")


def lr_factor(rule: str, world_size: int) -> float:
    """Learning-rate multiplier for a batch `world_size` times larger: 1, sqrt(W) (Adam's rule) or W."""
    if rule not in LR_RULES:
        raise ErnerfError(f"callbacks.data_parallel.lr_scaling must be one of {LR_RULES}, got '{rule}'.")
    return {"none": 1.0, "sqrt": math.sqrt(world_size), "linear": float(world_size)}[rule]


class DataParallelCallback(L.Callback):
    """On W > 1 ranks: reseed each rank's rays and train at lr x factor(W); a no-op on one device."""

    def __init__(self, seed: int = 0, lr_scaling: str = "sqrt") -> None:
        lr_factor(lr_scaling, 1)  # fail at construction on an unknown rule
        self.seed, self.lr_scaling = seed, lr_scaling

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """seed_everything gave every rank the same torch stream: without this all ranks draw the same pixels, eye
        jitter and marcher offsets. Rank 0 keeps the configured seed."""
        if stage == "fit" and trainer.world_size > 1:
            torch.manual_seed(self.seed + trainer.global_rank)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """After configure_optimizers, before a resumed optimizer state (already scaled) replaces it."""
        factor = lr_factor(self.lr_scaling, trainer.world_size)
        if factor == 1.0:
            return
        for config in trainer.lr_scheduler_configs:
            config.scheduler.base_lrs = [lr * factor for lr in config.scheduler.base_lrs]
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] *= factor
                if "initial_lr" in group:
                    group["initial_lr"] *= factor
