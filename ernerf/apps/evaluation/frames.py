"""What an evaluation looks at: the checkpoint, the subject's held-back frames, and their renders beside the truth
(`render_subject`), or another method's frames read from a folder (`read_renders`)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from datamodules.subject import FrameStore, parse_subject
from ernerf.apps.checkpoints import TrainedStage, find_trained, read_trained
from ernerf.apps.inference import Renderer, frame_store
from ernerf.apps.runs import last_checkpoint, offered_checkpoint, subject_eval_folder
from ernerf.errors import ErnerfError
from ernerf.rendering.frames import FirstFrame, Rendered, render_validation

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
    """`run=None` -> that (or the latest) stage's checkpoint (`find_trained`), out to <runs_root>/<subject>/eval; a
    run folder (the checkpoint it offers: `offered_checkpoint`) or a .ckpt file. An older checkpoint's stage is the one
    its run folder is named after."""
    if run is None:
        trained = find_trained(runs_root, subject, stage)
        return EvalTarget(trained, subject_eval_folder(runs_root, subject), trained.checkpoint.parents[1])
    path = Path(run)
    if path.is_dir():
        if not last_checkpoint(path).is_file():
            raise ErnerfError(f"run={run} has no checkpoints/last.ckpt: give a finished run folder or a .ckpt file.")
        return EvalTarget(read_trained(offered_checkpoint(path), path.name), path / "eval", path)
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


RENDER_SUFFIXES = (".png", ".jpg", ".jpeg")


def frame_files(folder: Path) -> list[Path]:
    """The PNG/JPG files of a folder in name order, numbers by value (frame_2 before frame_10; zero-padded names such
    as ER-NeRF's `<name>_ep0045_0001_rgb.png` sort the same either way)."""
    def key(path: Path) -> tuple[list[Any], str]:
        return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)], path.name

    return sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in RENDER_SUFFIXES), key=key)


def read_frame(path: Path, height: int, width: int, downscale: int) -> np.ndarray:
    """A frame from an image file, uint8 [H, W, 3] (alpha dropped); one-line errors for an unreadable file or a
    size other than the subject's frames at `downscale`."""
    try:
        with Image.open(path) as img:
            rgb = np.array(img.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise ErnerfError(f"cannot read {path} as an image ({exc}): renders= takes PNG or JPG frames.") from None
    if rgb.shape[:2] != (height, width):
        raise ErnerfError(f"{path} is {rgb.shape[1]}x{rgb.shape[0]}, the subject's frames are {width}x{height} at "
                          f"downscale={downscale}: give frames of that size (or the downscale that matches them).")
    return rgb


def row_features(root: Path) -> str:
    """The file name of the subject's smallest aud_<kind>.npy. Scoring frames read from files uses no audio feature,
    only the row count (one row per 40 ms of audio.wav, in every kind) that places each frame in audio.wav."""
    found = sorted(root.glob("aud_*.npy"), key=lambda p: p.stat().st_size) if root.is_dir() else []
    if root.is_dir() and not found:
        raise ErnerfError(f"{root} has no audio features (aud_<kind>.npy): python preprocess.py "
                          f"subject={root.name} preprocess.force=[audio_features]")
    return found[0].name if found else "aud_mel.npy"  # no folder: the subject parser says so


def read_renders(cfg: Any, folder: Path) -> tuple[Rendered, Any]:
    """The validation frames another renderer left in `folder` (`frame_files`: the first is the first validation
    frame) beside the ground truth, as `render_subject` gives our renders; -> (rendered, SubjectData)."""
    root = Path(cfg.paths.data_root) / cfg.subject
    data = parse_subject(root, row_features(root), downscale=cfg.downscale, **pose_options(cfg))
    frames = validation_frames(data.num_train, data.num_frames, cfg.max_frames)
    files = frame_files(folder)
    if len(files) < len(frames):
        fewer = f" (or max_frames={len(files)}: the first {len(files)})" if files else ""
        raise ErnerfError(f"renders={folder} holds {len(files)} PNG/JPG frames, {len(frames)} are needed: one per "
                          f"validation frame of {cfg.subject}{fewer}.")
    if len(files) > len(frames) and cfg.max_frames is None:  # e.g. a folder of several epochs' or depth images too
        log.warning("renders=%s holds %d PNG/JPG files for %d validation frames: the first %d are scored (%s ... %s)",
                    folder, len(files), len(frames), len(frames), files[0].name, files[len(frames) - 1].name)
    log.info("reading %d validation frames of %s from %s", len(frames), cfg.subject, folder)
    store = FrameStore(data, background="plate")  # the ground truth alone: gt_imgs/, whatever the background
    renders = np.stack([read_frame(path, data.height, data.width, cfg.downscale) for path in files[: len(frames)]])
    truths = np.stack([store.image(f).numpy() for f in frames.tolist()])
    return Rendered(frames, renders, truths, data.rects["face"][frames].numpy(), 0.0), data


def write_renders(folder: Path, rendered: Rendered) -> Path:
    """Each render as <folder>/<frame>.png (the subject's frame number, zero-padded), so that `renders=` reads them
    back in order and others can look at or score them; -> the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for frame, rgb in zip(rendered.frames.tolist(), rendered.renders):
        Image.fromarray(rgb).save(folder / f"{frame:06d}.png")
    return folder
