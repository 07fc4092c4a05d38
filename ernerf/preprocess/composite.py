"""Composite step: gt_imgs (frames over the background plate) and torso_imgs (RGBA torso + neck)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ernerf.errors import ErnerfError
from ernerf.io.atomic import atomic_dir
from ernerf.io.layout import SubjectLayout
from ernerf.io.png import write_png
from ernerf.preprocess import segmentation as seg
from ernerf.preprocess.base import PreprocessStep, StepContext
from ernerf.preprocess.check import redo_hint
from ernerf.preprocess.parsing import BACKGROUND, NECK, TORSO, read_parsing


def ground_truth(rgb: np.ndarray, labels: np.ndarray, plate: np.ndarray) -> np.ndarray:
    """The frame [H, W, 3] with its background pixels replaced by the plate's."""
    out = rgb.copy()
    cv2.copyTo(plate, (labels == BACKGROUND).view(np.uint8), out)  # several times faster than np.where
    return out


def torso_rgba(rgb: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """[H, W, 4] RGBA: torso and neck pixels opaque; head and background transparent (and black).

    Readers blend with the alpha (ER-NeRF's loader does), so hidden colour is free: zero makes the
    PNG small and fast to write.
    """
    alpha = ((labels == TORSO) | (labels == NECK)).view(np.uint8) * np.uint8(255)
    return cv2.merge([*cv2.split(cv2.bitwise_and(rgb, rgb, mask=alpha)), alpha])


@dataclass(frozen=True)
class _Chunk:
    frames: range
    layout: SubjectLayout
    gt_dir: Path
    torso_dir: Path
    plate: np.ndarray
    jpeg_quality: int
    png_level: int


def _composite_chunk(job: _Chunk) -> int:
    for i in job.frames:
        rgb = seg.read_rgb(job.layout.ori_img(i))
        labels = read_parsing(job.layout.parsing(i))
        gt = ground_truth(rgb, labels, job.plate)
        cv2.imwrite(str(job.gt_dir / f"{i}.jpg"), cv2.cvtColor(gt, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, job.jpeg_quality])
        write_png(job.torso_dir / f"{i}.png", torso_rgba(rgb, labels), level=job.png_level)
    return len(job.frames)


class CompositeStep(PreprocessStep):
    """gt_imgs/<i>.jpg and torso_imgs/<i>.png from the crop frames, the parsing and bc.jpg."""

    name = "composite"
    requires = ("headbox", "parsing", "background")

    def __init__(self, workers: int = 2, chunk_size: int = 25, jpeg_quality: int = 95, png_level: int = 4) -> None:
        self.workers, self.chunk_size, self.jpeg_quality = workers, chunk_size, jpeg_quality
        self.png_level = png_level  # zlib level of torso_imgs/: lossless at any level, only size and time change

    def outputs(self, layout: SubjectLayout) -> list[Path]:
        return [layout.gt_dir, layout.torso_dir]

    def run(self, ctx: StepContext) -> dict[str, Any]:
        layout, n = ctx.layout, ctx.num_frames
        if not layout.background.exists():
            raise ErnerfError(f"{layout.background} is missing: "
                              f"{redo_hint(layout.background)}.")
        if not layout.parsing_dir.is_dir():
            raise ErnerfError(f"{layout.parsing_dir} is missing: {redo_hint(layout.parsing_dir)}.")
        plate = seg.read_rgb(layout.background)
        with atomic_dir(layout.gt_dir) as gt_dir, atomic_dir(layout.torso_dir) as torso_dir:
            jobs = [_Chunk(r, layout, gt_dir, torso_dir, plate, self.jpeg_quality, self.png_level)
                    for r in seg.frame_chunks(n, self.chunk_size)]
            done = 0
            with ctx.bar(n) as bar:
                for written in seg.map_ordered(_composite_chunk, jobs, self.workers):
                    done += written
                    bar.update(written)
        return {"frames": done}
