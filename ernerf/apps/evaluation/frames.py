"""What an evaluation looks at: the checkpoint, the subject's held-back frames, and their renders beside the truth."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datamodules.subject import parse_subject, to_unit
from ernerf.apps.checkpoints import TrainedStage, find_trained, read_trained
from ernerf.apps.inference import Renderer, frame_store
from ernerf.apps.runs import last_checkpoint, subject_eval_folder
from ernerf.errors import ErnerfError
from ernerf.progress import Enabled, progress_bar

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalTarget:
    """The trained stage to evaluate, where its outputs go, and the run folder whose loggers get the figures."""

    trained: TrainedStage
    out_dir: Path
    run_dir: Path | None

    @property
    def checkpoint(self) -> Path:
        """The checkpoint evaluated."""
        return self.trained.checkpoint

    @property
    def stage(self) -> str:
        """The name of its stage, as the checkpoint records it (or its run folder, for an older one)."""
        return self.trained.stage.name


def resolve_target(runs_root: Path | str, subject: str, run: str | None, stage: str | None = None) -> EvalTarget:
    """`run=None` -> that (or the latest) stage's last.ckpt, out to <runs_root>/<subject>/eval; a run folder or a
    .ckpt file. An older checkpoint's stage is the one its run folder is named after."""
    if run is None:
        trained = find_trained(runs_root, subject, stage)
        return EvalTarget(trained, subject_eval_folder(runs_root, subject), trained.checkpoint.parents[1])
    path = Path(run)
    if path.is_dir():
        ckpt = last_checkpoint(path)
        if not ckpt.is_file():
            raise ErnerfError(f"run={run} has no checkpoints/last.ckpt: give a finished run folder or a .ckpt file.")
        return EvalTarget(read_trained(ckpt, path.name), path / "eval", path)
    if path.suffix == ".ckpt" and path.is_file():
        run_dir = path.parents[1] if path.parent.name == "checkpoints" else None
        return EvalTarget(read_trained(path, run_dir.name if run_dir else path.stem), path.parent / "eval", run_dir)
    raise ErnerfError(f"run={run} is neither a run folder nor an existing .ckpt file: give e.g. "
                      f"run=runs/{subject}/head or run=runs/{subject}/head/checkpoints/last.ckpt.")


def validation_frames(num_train: int, num_frames: int, max_frames: int | None) -> np.ndarray:
    """The held-back frames num_train..num_frames-1, the first `max_frames` of them (kept consecutive). # [T]"""
    frames = np.arange(num_train, num_frames)
    if len(frames) == 0:
        raise ErnerfError("the subject has no validation frames (transforms_val.json is empty): "
                          "re-run the tracking step, which holds back the last 1/11 of the frames.")
    return frames if max_frames is None else frames[:max_frames]


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


def render_validation(renderer: Renderer, data: Any, store: Any, frames: np.ndarray,
                      progress: Enabled = "auto", on_first: FirstFrame | None = None) -> Rendered:
    """Render each frame with its tracked pose, audio window and blink, over its own background (as validation).
    `on_first` hears how long the first frame took, so that a caller can say early how long the rest will take."""
    t0, renders, truths = time.perf_counter(), [], []
    intrinsics = torch.tensor(data.intrinsics, dtype=torch.float32)
    with progress_bar(len(frames), "rendering validation frames", enabled=progress) as bar:
        for f in frames.tolist():
            t = time.perf_counter()
            out = renderer.render_image(data.poses[f], intrinsics, data.height, data.width, data.audio_window(f),
                                        data.eye[f: f + 1], None, to_unit(store.background(f)))
            renders.append(to_uint8(out["rgb"]))
            if on_first is not None and len(renders) == 1:
                on_first(time.perf_counter() - t, data.height, len(frames))
            truths.append(store.image(f).cpu().numpy())
            bar.update(1)
    return Rendered(frames, np.stack(renders), np.stack(truths), data.rects["face"][frames].numpy(),
                    time.perf_counter() - t0)


def pose_options(cfg: Any) -> dict[str, Any]:
    """The evaluate config's `pose` as the subject parser takes it (as the training datamodule's)."""
    return {"scale": cfg.pose.scale, "offset": tuple(cfg.pose.offset)}


def render_subject(cfg: Any, renderer: Renderer, background: str, audio_file: str,
                   on_first: FirstFrame | None = None) -> tuple[Rendered, Any]:
    """Parse the subject as training does and render its validation frames over the stage's `background`;
    -> (rendered, SubjectData)."""
    data = parse_subject(Path(cfg.paths.data_root) / cfg.subject, audio_file, downscale=cfg.downscale,
                         **pose_options(cfg))
    store = frame_store(data, background)
    frames = validation_frames(data.num_train, data.num_frames, cfg.max_frames)
    log.info("rendering %d validation frames of %s", len(frames), cfg.subject)
    return render_validation(renderer, data, store, frames, cfg.get("progress", "auto"), on_first), data
