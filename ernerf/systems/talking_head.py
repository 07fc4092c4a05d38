"""TalkingHeadSystem: the one LightningModule of every stage (head, lips, torso differ only in config)."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from ernerf.errors import ErnerfError
from ernerf.fields import FaceCondition, TorsoOutputs, pixel_coords
from ernerf.losses import (
    LossComposer,
    attention_outside_mask,
    eye_audio_overlap,
    opacity_entropy,
    photometric_mse,
    torso_alpha_loss,
    uncertainty_weighted_mse,
)
from ernerf.rendering import RenderOutputs
from ernerf.rendering import render_image as march_frame
from ernerf.rendering import render_images as march_frames
from ernerf.systems.execution import EagerExecution, Execution, LaunchedRender, to_device
from ernerf.systems.head_layers import HeadLayers

log = logging.getLogger(__name__)

LOSS_TERMS = ("rgb", "rgb_uncertainty", "opacity_entropy", "ambient_audio", "ambient_eye", "lip_perceptual", "torso_alpha",
              "torso_deform")


def exponential_decay(optimizer: torch.optim.Optimizer, total_steps: int, final_ratio: float = 0.5) -> LambdaLR:
    """Every group's lr decays as `final_ratio ** (step / total_steps)` (ER-NeRF head: 0.5 at the last step)."""
    total = max(total_steps, 1)
    return LambdaLR(optimizer, lambda step: final_ratio ** min(step / total, 1.0))


def patches(pred: Tensor, target: Tensor, shape: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Row-major patch rays [h * w, 3] x2 -> images [1, 3, h, w] x2."""
    h, w = (int(v) for v in shape)
    return tuple(x.reshape(1, h, w, 3).permute(0, 3, 1, 2) for x in (pred, target))


def step_scalar(value: float) -> Tensor:
    """A per-step number (step, progress) as the step's batch carries it: a 0-dim float64 on the host. In kernels with
    device tensors it is a kernel argument, as the Python number would be (same kernels, same rounding); a CUDA
    graph's step fills its device scalar from it (ernerf.engine)."""
    return torch.tensor(float(value), dtype=torch.float64)


def psnr_from_mse(mse: Tensor) -> Tensor:
    """PSNR in dB of colours in [0, 1]."""
    return -10.0 * torch.log10(mse.clamp_min(1e-10))


class TalkingHeadSystem(L.LightningModule):
    """Builds audio encoder, face field (+ torso field), occupancy grid and marcher from config; trains, validates, renders.

    It holds the model and what training it means (losses, optimiser groups); how its steps and renders execute is
    its `execution` (ernerf/systems/execution.py): plain PyTorch until an engine attaches (ernerf/engine)."""

    def __init__(
        self,
        field: Mapping,
        audio_encoder: Mapping,
        marcher: Mapping,
        optimizer: Mapping,
        scheduler: Mapping,
        param_groups: Mapping[str, Mapping],
        loss: Mapping,
        audio_kind: str,
        feature_dim: int,
        num_frames: int,
        aabb: Sequence[float],
        grid: Mapping | None = None,
        frozen: Sequence[str] = (),
        init_from: str | None = None,
        torso: Mapping | None = None,
        level_window: Mapping | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()  # what the model is: ernerf.systems.loading.load_system rebuilds it from them
        self.audio_encoder: nn.Module = instantiate(audio_encoder, feature_dim=feature_dim)
        self.field: nn.Module = instantiate(field, num_frames=num_frames)
        self.grid: nn.Module | None = instantiate(grid) if grid else None
        self.torso: nn.Module | None = instantiate(torso, num_frames=num_frames) if torso else None
        self.marcher: nn.Module = instantiate(marcher)
        self.execution: Execution = EagerExecution()
        self.head_layers: HeadLayers | None = None  # the frozen head's renders of the training frames (torso stage)
        loss = dict(loss)
        self.perceptual_cfg = loss.pop("perceptual", None)  # built on the first patch batch, kept out of checkpoints
        self._perceptual: list[nn.Module] = []
        self.loss: LossComposer = instantiate(loss)
        unknown = {name for name, w in self.loss.weights.items() if w} - set(LOSS_TERMS)
        if unknown:
            raise ErnerfError(f"loss terms {sorted(unknown)} are not computed by TalkingHeadSystem (it knows {LOSS_TERMS}): fix conf/loss/.")
        self.register_buffer("aabb", torch.tensor(list(aabb), dtype=torch.float32), persistent=False)
        self.val_psnr = PeakSignalNoiseRatio(data_range=1.0)
        self.val_ssim = StructuralSimilarityIndexMeasure(data_range=1.0)
        self.freeze_matching(frozen)
        self.check_level_window(level_window)

    # ---------------------------------------------------------------- how it runs
    def use_execution(self, execution: Execution) -> None:
        """Run steps and renders through `execution` (an engine attaching itself); nothing of it is saved."""
        self.execution = execution

    def use_head_layers(self, layers: HeadLayers | None) -> None:
        """Composite training steps' torso under these renders of the frozen head instead of marching its rays
        (`callbacks.head_layers.HeadLayerCache` renders them); None: march again. Nothing of it is saved."""
        self.head_layers = layers

    @property
    def automatic_optimization(self) -> bool:
        """Whether Lightning steps the optimizer after `training_step`; under CUDA graphs the execution does."""
        return self.execution.automatic_optimization

    # ---------------------------------------------------------------- conditioning and rendering
    def condition(self, audio_window: Tensor, eye: Tensor | None, frame_index: Tensor | None) -> FaceCondition:
        """Audio window [8, 16, C] -> code; the field's per-frame conditioning (frame index [1] long, or None)."""
        code = self.audio_encoder(audio_window[None].float())[0]  # [audio_dim]
        return FaceCondition(audio=code, eye=eye, frame_index=frame_index)

    def conditions(self, audio_windows: Tensor, eyes: Tensor | None) -> FaceCondition:
        """Audio windows [B, 8, 16, C] and blinks [B] (or None) of B new-audio frames -> their codes, a row each."""
        codes = self.audio_encoder(audio_windows.float())  # [B, audio_dim]
        return FaceCondition(audio=codes, eye=None if eyes is None else eyes.reshape(-1, 1), frame_index=None)

    def render_rays(self, rays_o: Tensor, rays_d: Tensor, cond: FaceCondition, bg: Tensor,
                    capacity: int | None = None) -> Any:
        """March rays [N, 3] through the face field; `bg` [N, 3] or [3] fills what the head leaves uncovered."""
        field = self.execution.field_forward(self.field, training=True)
        return self.marcher(rays_o, rays_d, lambda x, d: field(x, d, cond), self.aabb, self.grid, bg, capacity=capacity)

    def behind_head(self, bg: Tensor, index: Tensor, height: int, width: int, c2w: Tensor,
                    frame_index: Tensor | None) -> tuple[Tensor, TorsoOutputs | None]:
        """What the head is composited over at pixels `index` [N]: the torso over `bg` [N, 3] when a torso field exists."""
        if self.torso is None:
            return bg, None
        torso = self.torso(pixel_coords(index, height, width).to(bg.device), c2w, frame_index)
        return torso.rgb * torso.alpha + bg * (1 - torso.alpha), torso

    @torch.no_grad()
    def render_image(self, c2w: Tensor, intrinsics: Sequence[float] | Tensor, height: int, width: int, audio_window: Tensor,
                     eye: Tensor | None, frame_index: int | None, bg: Tensor,
                     torso_frame: int | None = None) -> dict[str, Tensor]:
        """Render one frame: c2w [4, 4] in the model's space, bg [H, W, 3] -> rgb [H, W, 3], depth/opacity [H, W].

        `frame_index`: the number of a training frame (its per-frame codes), or None (new audio: the mean codes).
        With a torso field, `bg` is the plate and the torso is composited between it and the head (+ torso_alpha [H, W]);
        `torso_frame` gives the torso alone a frame's code (new audio pasted into that frame: its torso where the frame
        has it): a training frame's, or one fitted after them (`TorsoField.use_fitted_codes`); else it follows
        `frame_index`.
        The execution may replay whole frames as a CUDA graph (engine.render_cuda_graph), with the same results."""
        return self._render(c2w, intrinsics, height, width, audio_window, eye, self.frame_index(frame_index), bg,
                            torso_frames=self._torso_frames(torso_frame))

    @torch.no_grad()
    def launch_image(self, c2w: Tensor, intrinsics: Sequence[float] | Tensor, height: int, width: int,
                     audio_window: Tensor, eye: Tensor | None, frame_index: int | None, bg: Tensor,
                     torso_frame: int | None = None) -> LaunchedRender:
        """`render_image` queued on the device and not waited for where the execution can (engine.render_async):
        the caller reads the frame later (`LaunchedRender`), preparing the next one meanwhile. Inputs already on the
        device keep the host from waiting for it."""
        return self._render(c2w, intrinsics, height, width, audio_window, eye, self.frame_index(frame_index), bg,
                            torso_frames=self._torso_frames(torso_frame), launch=True)

    @torch.no_grad()
    def render_head(self, c2w: Tensor, intrinsics: Sequence[float] | Tensor, height: int, width: int,
                    audio_window: Tensor, eye: Tensor | None, frame_index: int | None) -> Tensor:
        """The head alone, without the torso, as `render_image` renders it: RGBA [H, W, 4], its colour over black
        (so multiplied by its opacity) and its opacity."""
        black = torch.zeros(height, width, 3)
        out = self._render(c2w, intrinsics, height, width, audio_window, eye, self.frame_index(frame_index), black,
                           head_only=True)
        return torch.cat([out["rgb"], out["opacity"][..., None]], -1)

    @torch.no_grad()
    def render_images(self, c2w: Tensor, intrinsics: Sequence[float] | Tensor, height: int, width: int,
                      audio_windows: Tensor, eyes: Tensor | None, bg: Tensor,
                      torso_frames: Sequence[int] | None = None) -> dict[str, Tensor]:
        """Render B frames of new audio together: c2w [B, 4, 4], audio_windows [B, 8, 16, C], eyes [B] or None,
        bg [B, H, W, 3] -> rgb [B, H, W, 3], depth/opacity [B, H, W] (+ torso_alpha [B, H, W]).

        Frame b is `render_image(c2w[b], ..., audio_windows[b], eyes[b], None, bg[b], torso_frames[b])`, up to the
        order in which floats are summed: its rays march with the others', each sample conditioned by its own frame's
        codes."""
        frames = (None if torso_frames is None or self.torso is None
                  else torch.cat([self._torso_frames(int(f)) for f in torso_frames]))
        return self._render(c2w, intrinsics, height, width, audio_windows, eyes, None, bg, torso_frames=frames)

    def _torso_frames(self, frame: int | None) -> Tensor | None:
        """A torso frame's number as `frame_index` gives it, checked against the frames with a torso code (the
        training frames and any fitted after them: `TorsoField.use_fitted_codes`); None where the model has no torso
        field (nothing to give it to)."""
        if self.torso is None or frame is None:
            return None
        if not 0 <= frame < self.torso.num_coded:
            raise ErnerfError(f"torso frame {frame} is outside the {self.torso.num_coded} frames with a torso code of "
                              "the model; pass torso_frame=None for the mean code")
        return to_device(torch.tensor([frame]), self.device)

    def _render(self, c2w: Tensor, intrinsics: Sequence[float] | Tensor, height: int, width: int, audio: Tensor,
                eye: Tensor | None, frame_index: Tensor | None, bg: Tensor, head_only: bool = False,
                torso_frames: Tensor | None = None, launch: bool = False) -> dict[str, Tensor] | LaunchedRender:
        """`render_frame` of one frame (c2w [4, 4]) or several (c2w [B, 4, 4]) through the execution, inputs moved to
        the device; the occupied-sample count dropped. `head_only`: one frame, no torso behind the head.
        `torso_frames`: the torso's training frame ([1] long for one frame, [B] for several); None: the torso follows
        `frame_index`. Given only when there are some: the inputs' layout keys a render graph. `launch`: the
        execution's `launch` (a LaunchedRender) instead of its `render`."""
        device, frames = self.device, c2w.shape[:-2]  # () for one frame, (B,) for several
        inputs = {"c2w": c2w.to(device).float(), "audio": audio.to(device),
                  "eye": None if eye is None else eye.to(device), "frame_index": frame_index,
                  "bg": bg.to(device).expand(*frames, height, width, 3), "height": height, "width": width,
                  "intrinsics": tuple(float(v) for v in intrinsics), **({"head_only": True} if head_only else {})}
        if torso_frames is not None:
            inputs["torso_frames"] = torso_frames
        rays = frames.numel() * height * width
        if not launch:
            return _without_occupied(self.execution.render(self.render_frame, inputs, rays, device))
        launched = self.execution.launch(self.render_frame, inputs, rays, device)
        redo = launched.redo
        return LaunchedRender(_without_occupied(launched.outputs), launched.short,
                              None if redo is None else lambda: _without_occupied(redo()))

    def frame_index(self, frame: int | None) -> Tensor | None:
        """A training frame's number as the frame index the model takes ([1] long on its device), checked against the
        training frames; None stays None."""
        if frame is None:
            return None
        if not 0 <= frame < int(self.hparams.num_frames):
            raise ErnerfError(f"frame_index {frame} is outside the {self.hparams.num_frames} training frames of the "
                              "model; pass frame_index=None for new audio")
        return to_device(torch.tensor([frame]), self.device)

    def render_frame(self, inputs: dict[str, Any], capacity: int | None, chunk: int) -> dict[str, Tensor]:
        """`render_image` on prepared inputs (on the device), `chunk` rays at a time; a fixed sample `capacity` for
        CUDA graphs (None: exact compaction). Outputs as render_image's, plus the occupied samples []. Inputs of
        several frames (c2w [B, 4, 4], from `render_images`) render together; they are one function so that an
        execution replaying renders as graphs keeps one graph per input layout, batches included."""
        if inputs["c2w"].ndim == 3:
            return self.render_batch(inputs, capacity, chunk)
        height, width, frame_index = inputs["height"], inputs["width"], inputs["frame_index"]
        cond = self.condition(inputs["audio"], inputs["eye"], frame_index)
        pixels = torch.arange(height * width, device=self.device)
        bg, torso = inputs["bg"].reshape(-1, 3), None
        if not inputs.get("head_only"):
            bg, torso = self.behind_head(bg, pixels, height, width, inputs["c2w"],
                                         inputs.get("torso_frames", frame_index))
        field = self.execution.field_forward(self.field, training=False)
        out = march_frame(self.marcher, lambda x, d: field(x, d, cond, extras=False), inputs["c2w"],
                           inputs["intrinsics"], height, width, self.aabb, self.grid, bg.reshape(height, width, 3),
                           chunk=chunk, capacity=capacity, extras=False)
        result = {"rgb": out["rgb"].float().clamp(0, 1), "depth": out["depth"].float(),
                  "opacity": out["opacity"].float(), "occupied": out["occupied"]}
        if torso is not None:
            result["torso_alpha"] = torso.alpha.float().reshape(height, width)
        return result

    def render_batch(self, inputs: dict[str, Any], capacity: int | None, chunk: int) -> dict[str, Tensor]:
        """`render_frame` of B frames: their rays marched together, `chunk` rays per frame at a time (a frame alone
        marches `chunk` rays a pass: the batch as many per frame, so its passes are B times wider). The torso, a
        per-pixel field of one pose, is drawn frame by frame."""
        height, width, frames = inputs["height"], inputs["width"], inputs["c2w"].shape[0]
        cond = self.conditions(inputs["audio"], inputs["eye"])
        pixels = torch.arange(height * width, device=self.device)
        torso_frames = inputs.get("torso_frames")  # [B] long, or None: the mean torso code
        behind = [self.behind_head(bg.reshape(-1, 3), pixels, height, width, c2w,
                                   None if torso_frames is None else torso_frames[b:b + 1])
                  for b, (bg, c2w) in enumerate(zip(inputs["bg"], inputs["c2w"]))]
        bg = torch.stack([b for b, _ in behind]).reshape(frames, height, width, 3)
        field = self.execution.field_forward(self.field, training=False)
        out = march_frames(self.marcher, lambda x, d, groups: field(x, d, cond, extras=False, groups=groups),
                           inputs["c2w"], inputs["intrinsics"], height, width, self.aabb, self.grid, bg,
                           chunk=chunk * frames, capacity=capacity, extras=False)
        result = {"rgb": out["rgb"].float().clamp(0, 1), "depth": out["depth"].float(),
                  "opacity": out["opacity"].float(), "occupied": out["occupied"]}
        if self.torso is not None:
            result["torso_alpha"] = torch.stack([t.alpha.float() for _, t in behind]).reshape(frames, height, width)
        return result

    @torch.no_grad()
    def refresh_occupancy(self, audio_window: Tensor, eye: Tensor | None) -> None:
        """Update the occupancy grid with the density under one frame's conditioning."""
        cond = self.condition(audio_window, eye, None)
        self.grid.update(lambda x: self.field.density(x, cond))

    # ---------------------------------------------------------------- training
    def step_fraction(self) -> float:
        """Progress through training in [0, 1] (ER-NeRF ramps uncertainty and ambient losses with it); 0 outside fit."""
        if self._trainer is None:
            return 0.0
        total = self.trainer.max_steps if self.trainer.max_steps and self.trainer.max_steps > 0 else self.trainer.estimated_stepping_batches
        return min(self.global_step / max(total, 1), 1.0)

    def check_level_window(self, window: Mapping | None) -> None:
        """Refuse a coarse-to-fine schedule that the encoder or its own numbers cannot follow."""
        if not window:
            return
        if not hasattr(self.field.encoder, "open_levels"):
            raise ErnerfError(f"model.level_window needs an encoder with levels to open (encoder=triplane or "
                              f"triplane_triton), not {type(self.field.encoder).__name__}: set model.level_window=null.")
        first, until = window.get("first"), window.get("until")
        if first is None or until is None or not 0 < until <= 1 or not 0 < first <= self.field.encoder.num_levels:
            raise ErnerfError(f"model.level_window needs first in (0, {self.field.encoder.num_levels}] levels and "
                              f"until in (0, 1] of the run, got {dict(window)}.")

    def levels_open(self) -> float | None:
        """How many of the face encoder's levels this step trains under `level_window` (coarse to fine: `first` at
        the start, all by the `until` fraction of the run); None: all, no schedule. A stage that starts from a
        previous stage's weights (`init_from`) has its fine levels trained already and keeps them all open."""
        window = self.hparams.get("level_window")
        if not window or self.hparams.init_from:
            return None
        levels = self.field.encoder.num_levels
        return window["first"] + (levels - window["first"]) * min(self.step_fraction() / window["until"], 1.0)

    def loss_terms(self, out: RenderOutputs, batch: dict, torso: TorsoOutputs | None = None,
                   progress: Tensor | None = None) -> dict[str, Tensor]:
        """The active loss terms of one ray batch (names as in conf/loss/); patch and torso terms where they apply.
        `progress`: [] training progress (`step_scalar`), by default this step's."""
        progress = step_scalar(self.step_fraction()) if progress is None else progress
        pred, target, face = out.rgb.float(), batch["rgb"], batch["face_mask"]
        weight = batch.get("loss_weight")  # [N] when the rays were not drawn uniformly and the sampler makes up for it
        extras = {name: value.float() for name, value in out.extras.items()}
        makers = {
            "rgb": lambda: photometric_mse(pred, target, sample_weight=weight),
            "rgb_uncertainty": lambda: uncertainty_weighted_mse(pred, target, extras["uncertainty"], progress, face,
                                                                sample_weight=weight),
            "opacity_entropy": lambda: opacity_entropy(out.opacity.float()),
            "ambient_audio": lambda: attention_outside_mask(extras["audio_att"], face),
            "ambient_eye": lambda: eye_audio_overlap(extras["eye_att"], extras["audio_att"], face),
        }
        if batch.get("patch_shape") is not None:
            makers["lip_perceptual"] = lambda: self.perceptual()(*patches(pred, target, batch["patch_shape"]))
        if torso is not None:
            makers["torso_alpha"] = lambda: torso_alpha_loss(torso.alpha, batch["torso_mask"], ~batch["head_mask"])
            makers["torso_deform"] = lambda: torso.deform.abs().mean()
        return {name: make() for name, make in makers.items() if self.loss.active(name)}

    def perceptual(self) -> nn.Module:
        """The patch loss of `loss.perceptual` (LPIPS or its offline fallback), built once on this device."""
        if not self._perceptual:
            if not self.perceptual_cfg:
                raise ErnerfError("loss.weights.lip_perceptual is set but the loss has no `perceptual` entry: "
                                  "use loss=lips_lpips or loss=lips_dssim.")
            self._perceptual.append(instantiate(self.perceptual_cfg))
        return self._perceptual[0].to(self.device)

    def step_outputs(self, batch: dict, capacity: int | None = None) -> dict[str, Tensor]:
        """Loss and what is logged of one ray batch; `batch["step"]` and `["progress"]` ([] tensors) drive the loss
        ramps."""
        bg, torso = self.behind_head(batch["bg"], batch["pixel_index"], batch["height"], batch["width"], batch["c2w"],
                                     batch["frame_index"])
        if self.head_layers is not None:  # the frozen head, rendered once per frame
            out = self.head_layers.over(batch["frame_index"], batch["pixel_index"], bg)
        else:
            cond = self.condition(batch["audio"], batch["eye"], batch["frame_index"])
            out = self.render_rays(batch["rays_o"], batch["rays_d"], cond, bg, capacity)
        total, values = self.loss(self.loss_terms(out, batch, torso, batch["progress"]), batch["step"])
        occupied = out.samples_occupied if out.samples_occupied is not None else torch.tensor(out.samples_evaluated)
        psnr = psnr_from_mse(torch.mean((out.rgb.detach().float() - batch["rgb"]) ** 2))
        return {"loss": total, "psnr": psnr, "rgb": out.rgb, "target": batch["rgb"], "occupied": occupied,
                "patch_shape": batch.get("patch_shape"), "pixel_index": batch["pixel_index"],
                "frame_index": batch["frame_index"], **{f"loss_{name}": value for name, value in values.items()}}

    def training_step(self, batch: dict, batch_idx: int) -> dict[str, Tensor]:
        log_now = self.logs_this_step()
        batch = {**batch, "step": step_scalar(self.global_step), "progress": step_scalar(self.step_fraction())}
        levels = self.levels_open()
        if levels is not None:
            self.field.encoder.open_levels(levels)
        outputs = self.execution.train_step(self.step_outputs, batch)
        if log_now:
            self.log_step_values(outputs)
        # callbacks log the rendered lip patches and feed the rays' errors back to the sampler (a graphed step builds
        # its batch inside: its targets, pixels and frame come back too)
        return {"loss": outputs["loss"], "rgb": outputs["rgb"].detach(), "target": outputs["target"],
                "patch_shape": outputs["patch_shape"], "pixel_index": outputs["pixel_index"],
                "frame_index": outputs["frame_index"]}

    def log_step_values(self, outputs: Mapping[str, Tensor]) -> None:
        """Loss terms, loss and PSNR of this step, copied to the host at once and logged as CPU tensors."""
        names = [f"loss_{name}" for name in self.loss.weights if f"loss_{name}" in outputs] + ["loss", "psnr"]
        values = torch.stack([outputs[n].detach().float().reshape(()) for n in names]).cpu()  # one sync
        for name, value in zip(names, values):
            self.log(f"train/{name}", value, prog_bar=name in ("loss", "psnr"))

    def logs_this_step(self) -> bool:
        """Log step values only on the steps the loggers write (trainer.log_every_n_steps), as CPU tensors.

        Lightning reads every progress-bar value with .item() after *every* batch until the next value is logged: a
        host sync per step, which stalls a graphed step (docs/performance.md). Values on the CPU cost one copy on
        the logging step and nothing after. Outside a Trainer, always."""
        if self._trainer is None:
            return True
        every = max(int(self.trainer.log_every_n_steps), 1)
        return (self.global_step + 1) % every == 0 or self.global_step == 0

    def validation_step(self, batch: dict, batch_idx: int) -> dict[str, Tensor]:
        out = self.render_image(batch["c2w"], batch["intrinsics"], batch["height"], batch["width"], batch["audio"],
                                batch["eye"], batch["frame_index"], batch["bg"])
        pred, target = out["rgb"].permute(2, 0, 1)[None], batch["rgb"].permute(2, 0, 1)[None]  # [1, 3, H, W]
        self.val_psnr(pred, target)
        self.val_ssim(pred, target)
        self.log("val/psnr", self.val_psnr, prog_bar=True)
        self.log("val/ssim", self.val_ssim)
        return out

    # ---------------------------------------------------------------- optimisation
    def freeze_matching(self, patterns: Sequence[str]) -> None:
        """Freeze parameters whose names match any regex in `patterns` (e.g. the head while the torso trains).

        A pattern that matches nothing is an error: after a rename it would silently train what it meant to freeze."""
        names = [name for name, _ in self.named_parameters()]
        unmatched = [p for p in patterns if not any(re.match(p, name) for name in names)]
        if unmatched:
            raise ErnerfError(f"model.frozen patterns {unmatched} match no parameter of the model (its parameters start "
                              f"with {sorted({n.split('.')[0] + '.' for n in names})}): fix conf/stage/ or model.frozen.")
        for name, param in self.named_parameters():
            if any(re.match(p, name) for p in patterns):
                param.requires_grad_(False)

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Trainable parameters split into the configured named groups (first matching regex wins)."""
        specs = {name: dict(spec) for name, spec in self.hparams.param_groups.items()}
        members: dict[str, list[nn.Parameter]] = {name: [] for name in specs}
        for pname, param in self.named_parameters():
            if not param.requires_grad:
                continue
            group = next((g for g, spec in specs.items() if re.match(spec["match"], pname)), None)
            if group is None:
                raise ErnerfError(f"parameter '{pname}' matches no entry of model.param_groups: add a group "
                                  "(a catch-all `match: .*` last) so every trainable parameter has a learning rate.")
            members[group].append(param)
        return [{"name": g, "params": members[g], **{k: v for k, v in spec.items() if k != "match"}}
                for g, spec in specs.items() if members[g]]

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = instantiate(self.hparams.optimizer)(self.parameter_groups())
        total = self.trainer.max_steps if self.trainer.max_steps > 0 else self.trainer.estimated_stepping_batches
        scheduler = instantiate(self.hparams.scheduler)(optimizer, total_steps=int(total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        self.fit_audio_input_norm()
        if self.hparams.init_from:  # a previous stage's statistics replace these (the same subject's)
            self.load_initial_weights(self.hparams.init_from)

    def fit_audio_input_norm(self) -> None:
        """An audio encoder that standardises its input takes the statistics of the training frames' features; a
        resumed run's checkpoint restores its own after this."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if not getattr(self.audio_encoder, "input_norm", False) or datamodule is None:
            return
        self.audio_encoder.fit_input_norm(datamodule.data.training_audio())

    def load_initial_weights(self, path: str) -> None:
        """Start from a previous stage's checkpoint (weights only; new modules keep their init)."""
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
        except FileNotFoundError as err:
            raise ErnerfError(f"init_from checkpoint {path} does not exist: train the previous stage first.") from err
        self.check_audio_input_norm(state, path)
        missing, unexpected = self.load_state_dict(state, strict=False)
        log.info("initialised from %s (%d new, %d unused tensors)", path, len(missing), len(unexpected))

    def check_audio_input_norm(self, state: Mapping[str, Tensor], path: str) -> None:
        """A stage goes on from the audio net it starts from: one that standardised its input, or one that did not.
        A mismatch would load without an error (the statistics dropped, or new ones under weights that never saw
        them) and move the mouth wrongly, so it is refused."""
        saved = "audio_encoder.net.input_shift" in state
        ours = bool(getattr(self.audio_encoder, "input_norm", False))
        if saved != ours:
            raise ErnerfError(f"{path} was trained with model.audio_encoder.input_norm={str(saved).lower()} and this "
                              f"stage has {str(ours).lower()}: add model.audio_encoder.input_norm={str(saved).lower()} "
                              "(or the experiment= the previous stage ran with).")


def _without_occupied(outputs: dict[str, Tensor]) -> dict[str, Tensor]:
    """A render's outputs as callers get them: the occupied-sample count is the execution's business."""
    outputs.pop("occupied")
    return outputs
