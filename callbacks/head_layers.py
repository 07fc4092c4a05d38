"""Render the frozen head of every training frame once when a torso stage starts (ernerf/systems/head_layers.py)."""

from __future__ import annotations

import itertools
import logging
import time
from typing import Any

import lightning as L
import torch

from datamodules.frames import available_host_memory
from ernerf.systems.head_layers import layer_bytes, render_head_layers

log = logging.getLogger(__name__)

GIB = 2**30


class HeadLayerCache(L.Callback):
    """At the start of training a system with a torso field and a frozen head, render the head of each training
    frame once and hand the layers to the system, whose steps then composite the torso under them instead of
    marching the head's rays; dropped when training ends.

    `enabled`: true, false, or auto: when the run's steps would march more of the head's rays (max_steps x
    `rays_per_step`) than rendering every training frame once does (a short CPU run of a long subject would not).
    `memory_share`: the most of the free memory (the GPU's, or the host's on a CPU) the layers may take; a subject
    whose layers would take more trains with the head marched every step, as it is said in the log.
    """

    def __init__(self, enabled: bool | str = "auto", rays_per_step: int = 65536, memory_share: float = 0.5,
                 progress: Any = "auto") -> None:
        if enabled not in (True, False, "auto"):
            raise ValueError(f"callbacks.head_layers.enabled is true, false or auto, not {enabled!r}")
        self.enabled, self.rays_per_step = enabled, rays_per_step
        self.memory_share, self.progress = memory_share, progress

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled or getattr(pl_module, "torso", None) is None or not head_frozen(pl_module):
            return
        datamodule = trainer.datamodule
        frames, (height, width) = datamodule.num_train_frames, datamodule.frame_size
        steps = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else 0
        if self.enabled == "auto" and not layers_pay(steps, self.rays_per_step, frames, height, width):
            log.info("the torso stage marches the frozen head's rays: its %d steps of %d rays cost less than "
                     "rendering its %d frames once", steps, self.rays_per_step, frames)
            return
        need, free = layer_bytes(frames, height, width), free_bytes(pl_module.device)
        if need > self.memory_share * free:
            log.warning("the frozen head's layers of %d frames would take %.1f GiB of %.1f GiB free: the torso "
                        "stage marches the head's rays every step instead (slower, same model)", frames, need / GIB,
                        free / GIB)
            return
        start = time.perf_counter()
        was_training = pl_module.training
        pl_module.eval()  # as validation renders: sample bins at their centres
        try:
            layers = render_head_layers(pl_module.render_head, frame_inputs(datamodule, pl_module.device), frames,
                                        datamodule.data.intrinsics, height, width, pl_module.device, self.progress)
        finally:
            pl_module.train(was_training)
        pl_module.use_head_layers(layers)
        log.info("rendered the frozen head of %d training frames once (%.1f s, %.2f GiB): torso steps composite "
                 "under it", frames, time.perf_counter() - start, need / GIB)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if getattr(pl_module, "head_layers", None) is not None:
            pl_module.use_head_layers(None)


def layers_pay(steps: int, rays_per_step: int, frames: int, height: int, width: int) -> bool:
    """`enabled: auto`'s rule: whether a run's steps would march more of the head's rays than rendering each of its
    frames once does."""
    return steps * rays_per_step >= frames * height * width


def head_frozen(system: L.LightningModule) -> bool:
    """Whether nothing of the head (its field and audio encoder) trains."""
    return not any(p.requires_grad for p in itertools.chain(system.field.parameters(),
                                                              system.audio_encoder.parameters()))


def free_bytes(device: torch.device) -> int:
    """Free memory where the layers would live."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return available_host_memory()


def frame_inputs(datamodule: Any, device: torch.device):
    """Frame number -> its pose, audio window and eye (as tracked: no training jitter) on `device`."""
    store = datamodule.store

    def inputs(frame: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        audio, eye = datamodule.conditioning(frame)
        return store.poses[store.index(frame)][0].to(device), audio.to(device), eye.to(device)

    return inputs
