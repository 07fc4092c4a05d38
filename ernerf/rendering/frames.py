"""A subject's whole frames rendered as validation renders them, beside their ground truth: what evaluate.py scores,
and what a torso stage's validation scores of its training frames (callbacks/torso_own_code.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from datamodules.subject import to_unit
from ernerf.progress import Enabled, progress_bar


@dataclass(frozen=True)
class Rendered:
    """Renders and ground truth of the evaluated frames, uint8 [T, H, W, 3]; face boxes (top, bottom, left, right)."""

    frames: np.ndarray  # [T] subject frame index
    renders: np.ndarray
    truths: np.ndarray
    face_rects: np.ndarray  # [T, 4]
    seconds: float


def to_uint8(rgb: Any) -> np.ndarray:
    """A [H, W, 3] render in [0, 1] (tensor or array) -> uint8."""
    arr = rgb.detach().float().cpu().numpy() if hasattr(rgb, "detach") else np.asarray(rgb, np.float32)
    return (np.clip(arr, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


FirstFrame = Callable[[float, int, int], None]  # (seconds the first frame took, its height, frames in all) -> None


def render_validation(renderer: Any, data: Any, store: Any, frames: np.ndarray,
                      progress: Enabled = "auto", on_first: FirstFrame | None = None,
                      own_torso: bool = False, what: str = "validation frames") -> Rendered:
    """Render each frame with its tracked pose, audio window and blink, over its own background (as validation), with
    `renderer.render_image` (a trained system's, or inference's `Renderer`); `data` is the subject (SubjectData),
    `store` its frames (FrameStore).
    `on_first` hears how long the first frame took, so that a caller can say early how long the rest will take.
    `own_torso`: frames trained on, their torso drawn with each frame's own code (as a crop pasted into that frame
    is), not the mean code a held-out frame gets."""
    t0, renders, truths = time.perf_counter(), [], []
    intrinsics = torch.tensor(data.intrinsics, dtype=torch.float32)
    with progress_bar(len(frames), f"rendering {what}", enabled=progress) as bar:
        for f in frames.tolist():
            t = time.perf_counter()
            out = renderer.render_image(data.poses[f], intrinsics, data.height, data.width, data.audio_window(f),
                                        data.eye[f: f + 1], None, to_unit(store.background(f)),
                                        torso_frame=f if own_torso else None)
            renders.append(to_uint8(out["rgb"]))
            if on_first is not None and len(renders) == 1:
                on_first(time.perf_counter() - t, data.height, len(frames))
            truths.append(store.image(f).cpu().numpy())
            bar.update(1)
    return Rendered(frames, np.stack(renders), np.stack(truths), data.rects["face"][frames].numpy(),
                    time.perf_counter() - t0)
