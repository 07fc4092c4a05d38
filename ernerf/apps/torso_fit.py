"""Torso codes for frames the torso field was not trained on, fitted to those frames' images.

The torso stage learns a code per training frame: where the body sat in it, which the head pose does not say
(docs/evaluation.md, "The torso code of the frame pasted into"). `infer.py` pastes crops into the subject's frames and
its walk through them passes the held-out ones too, which have no code: the mean code draws an average torso that
disagrees with the frame's own where the paste meets it. The frame's image is at hand (the crop is pasted into it),
so its code is fitted to it with the field's weights frozen, as NeRF-W fits the appearance codes of its test images
(Martin-Brualla et al., arXiv 2008.02268). Codes fitted on the left half of a frame and scored on its right half are
that paper's evaluation, used by `bench/torso_codes.py --held-out`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ernerf.errors import ErnerfError
from ernerf.fields.torso import pixel_coords
from ernerf.progress import Enabled, progress_bar

CACHE_VERSION = 1
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CodeFit:
    """How a frame's torso code is fitted: Adam on the code alone, `rays` pixels of the frame a step, from the mean
    code."""

    steps: int = 100
    rays: int = 4096
    lr: float = 0.02
    seed: int = 0


def fit_torso_code(system: Any, c2w: Tensor, intrinsics: Tensor, height: int, width: int, audio_window: Tensor,
                   eye: Tensor | None, bg: Tensor, target: Tensor, pixels: Tensor, fit: CodeFit = CodeFit()) -> Tensor:
    """The torso code [individual_dim] under which the frame's render (the head over the torso over `bg` [H, W, 3],
    as the torso stage composites) best matches `target` [H, W, 3] (both in [0, 1]) at flat pixel ids `pixels` [P].
    The head is rendered once (it does not depend on the torso's code); each step draws `fit.rays` of the pixels."""
    torso, device = system.torso, system.device
    head = system.render_head(c2w, intrinsics, height, width, audio_window, eye, None).reshape(-1, 4).to(device)
    pixels = pixels.to(device)
    head, bg = head[pixels], bg.to(device).reshape(-1, 3)[pixels].float()
    target = target.to(device).reshape(-1, 3)[pixels].float()
    coords, c2w = pixel_coords(pixels, height, width), c2w.to(device).float()
    code = torso.code(None).detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([code], lr=fit.lr)
    generator = torch.Generator(device=device).manual_seed(fit.seed)
    with torch.enable_grad():
        for _ in range(fit.steps):
            pick = torch.randint(len(pixels), (min(fit.rays, len(pixels)),), generator=generator, device=device)
            out = torso.draw(coords[pick], c2w, code)
            under = out.rgb * out.alpha + bg[pick] * (1 - out.alpha)
            rgb = head[pick, :3] + (1 - head[pick, 3:]) * under
            (code.grad,) = torch.autograd.grad((rgb - target[pick]).square().mean(), code)
            optimizer.step()
    return code.detach()[0]


def frame_pixels(height: int, width: int, part: str = "all") -> Tensor:
    """Flat pixel ids of a frame to fit on: "all", or its "left" or "right" half (NeRF-W's evaluation)."""
    pixels = torch.arange(height * width)
    if part == "all":
        return pixels
    if part in ("left", "right"):
        left = pixels % width < width // 2
        return pixels[left if part == "left" else ~left]
    raise ValueError(f"part must be all, left or right, not {part!r}")


def fit_torso_codes(system: Any, store: Any, frames: np.ndarray | list[int], part: str = "all",
                    fit: CodeFit = CodeFit(), progress: Enabled = "auto") -> Tensor:
    """`fit_torso_code` of each subject frame of a `FrameStore` (its tracked pose, own audio window and blink, its
    stage background), on the frame's `part` -> [F, individual_dim]."""
    data = store.data
    intrinsics = torch.tensor(data.intrinsics, dtype=torch.float32)
    pixels = frame_pixels(data.height, data.width, part)
    codes = []
    with progress_bar(len(frames), "fitting torso codes", enabled=progress) as bar:
        for f in [int(f) for f in frames]:
            codes.append(fit_torso_code(
                system, data.poses[f], intrinsics, data.height, data.width, store.audio_window(f), data.eye[f: f + 1],
                store.background(f).float() / 255, store.image(f).float() / 255, pixels, fit))
            bar.update(1)
    return torch.stack(codes) if codes else torch.zeros(0, system.torso.individual_codes.shape[1])


def cache_key(checkpoint: Path, data: Any, fit: CodeFit) -> dict[str, Any]:
    """What fitted codes depend on: the checkpoint (path, size, modification time), the frame size and the fit."""
    stat = Path(checkpoint).stat()
    return {"version": CACHE_VERSION, "checkpoint": str(Path(checkpoint).resolve()), "bytes": stat.st_size,
            "mtime_ns": stat.st_mtime_ns, "size": [int(data.height), int(data.width)], "fit": asdict(fit)}


def held_out_codes(system: Any, store: Any, last_frame: int, checkpoint: Path, cache: Path | None,
                   fit: CodeFit = CodeFit(), progress: Enabled = "auto") -> int:
    """Give the torso field codes for the held-out frames `num_train .. last_frame` of a `FrameStore` (a walk that
    reaches them pastes into them), fitted to their images or read from `cache` (a file beside the run, written after
    fitting, reused while the checkpoint, frame size and fit are the same). Returns the frames that now have a code
    of their own (`TorsoField.num_coded`)."""
    data = store.data
    torso, first = system.torso, int(data.num_train)
    if last_frame < first:
        return torso.num_coded
    if len(torso.individual_codes) != first:
        raise ErnerfError(f"{checkpoint} was trained on {len(torso.individual_codes)} frames, the subject now has "
                          f"{first} training frames: train its torso stage again (train.py stage=torso)")
    key = cache_key(checkpoint, data, fit)
    known: dict[int, Tensor] = {}
    if cache is not None and cache.is_file():
        saved = torch.load(cache, map_location="cpu", weights_only=True)
        if saved.get("key") == key:
            known = {int(f): c for f, c in zip(saved["frames"], saved["codes"])}
    wanted = list(range(first, last_frame + 1))
    missing = [f for f in wanted if f not in known]
    if missing:  # a line also where no progress bar shows (not a terminal): the fit can take a minute on a CPU
        log.info("fitting torso codes to %d held-out frames the walk reaches (once%s)", len(missing),
                 f"; kept in {cache}" if cache is not None else "")
        known.update(zip(missing, fit_torso_codes(system, store, missing, "all", fit, progress)))
        if cache is not None:
            frames = sorted(known)
            tmp = cache.with_suffix(".tmp")
            torch.save({"key": key, "frames": frames, "codes": torch.stack([known[f] for f in frames])}, tmp)
            tmp.replace(cache)
    torso.use_fitted_codes(torch.stack([known[f] for f in wanted]))
    return torso.num_coded
