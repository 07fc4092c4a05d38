"""Data-parallel recipe (docs/multigpu.md): per-rank ray seeds, the step budget and learning rates scaled to the world
size, and Lightning's per-step SIGTERM broadcast thinned out."""

from __future__ import annotations

import math
import lightning as L
import torch

from ernerf.errors import ErnerfError
from ernerf.losses.composer import LossComposer

LR_RULES = ("none", "sqrt", "linear")


def lr_factor(rule: str, world_size: int) -> float:
    """Learning-rate multiplier for a batch `world_size` times larger: 1, sqrt(W) (Adam's rule) or W."""
    if rule not in LR_RULES:
        raise ErnerfError(f"callbacks.data_parallel.lr_scaling must be one of {LR_RULES}, got '{rule}'.")
    return {"none": 1.0, "sqrt": math.sqrt(world_size), "linear": float(world_size)}[rule]


def per_rank_steps(single_device_steps: int, world_size: int) -> int:
    """Optimizer steps that see as many rays on `world_size` ranks as `single_device_steps` on one device."""
    return single_device_steps if single_device_steps <= 0 else math.ceil(single_device_steps / world_size)


def thin_sigterm_broadcast(trainer: L.Trainer, every_n_steps: int) -> bool:
    """Let Lightning's SIGTERM broadcast run on one training step in `every_n_steps`; True if it was thinned.

    Lightning (>= 2.5, PR #20825) broadcasts a SIGTERM flag from rank 0 before *every* training step under DDP: a
    tensor copied from the host, a broadcast and an `.item()`, i.e. two host syncs per step that stall the host
    until the GPU has drained its queue (Lightning issue #21487; H200, graphed head step: 2.0 syncs per step).
    Every rank still calls it at the same steps, so all ranks stop together, at most `every_n_steps` later."""
    loop = trainer.fit_loop.epoch_loop
    broadcast = getattr(loop, "_broadcast_sigterm_tensor", None)  # absent in other Lightning versions: left alone
    if broadcast is None or every_n_steps <= 1 or getattr(broadcast, "thinned", False):
        return False  # (a second fit on the same trainer must not thin the thinned one again)
    calls = 0

    def thinned() -> None:
        nonlocal calls
        if calls % every_n_steps == 0:
            broadcast()
        calls += 1

    thinned.thinned = True
    loop._broadcast_sigterm_tensor = thinned
    return True


class DataParallelCallback(L.Callback):
    """On W > 1 ranks: reseed each rank's rays, run max_steps / W steps (validation intervals and loss ramps in steps
    likewise) at lr x factor(W), check for SIGTERM every `sigterm_every_n_steps` steps; a no-op on one device."""

    def __init__(self, seed: int = 0, lr_scaling: str = "sqrt", divide_steps: bool = True,
                 sigterm_every_n_steps: int = 50) -> None:
        lr_factor(lr_scaling, 1)  # fail at construction on an unknown rule
        self.seed, self.lr_scaling, self.divide_steps = seed, lr_scaling, divide_steps
        self.sigterm_every_n_steps = sigterm_every_n_steps

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Before configure_optimizers: the scheduler and loss ramps then read the divided budget."""
        if stage != "fit" or trainer.world_size == 1:
            return
        # seed_everything gave every rank the same torch stream: without this all ranks draw the same pixels,
        # eye jitter and marcher offsets. Rank 0 keeps the configured seed.
        torch.manual_seed(self.seed + trainer.global_rank)
        thin_sigterm_broadcast(trainer, self.sigterm_every_n_steps)
        if self.divide_steps:
            loop = trainer.fit_loop.epoch_loop
            loop.max_steps = per_rank_steps(loop.max_steps, trainer.world_size)
            if isinstance(trainer.val_check_interval, int):  # validate at the same fractions of the run
                trainer.val_check_interval = per_rank_steps(trainer.val_check_interval, trainer.world_size)
            loss = getattr(pl_module, "loss", None)  # loss ramps (steps, resolved from the single-device budget)
            if isinstance(loss, LossComposer):  # end at the same fraction of the run too
                loss.ramps = {name: per_rank_steps(steps, trainer.world_size) for name, steps in loss.ramps.items()}

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
