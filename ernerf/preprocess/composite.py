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
from ernerf.preprocess.parsing import BACKGROUND, HEAD, NECK, TORSO, read_parsing


def ground_truth(rgb: np.ndarray, labels: np.ndarray, plate: np.ndarray) -> np.ndarray:
    """The frame [H, W, 3] with its background pixels replaced by the plate's."""
    out = rgb.copy()
    cv2.copyTo(plate, (labels == BACKGROUND).view(np.uint8), out)  # several times faster than np.where
    return out


# How far the neck and the torso are continued up behind the head, in pixels of a 512 px crop (ER-NeRF's own
# preprocessing continues them 48 and 8 px), and the darkening per pixel that shades the hidden part like a throat.
NECK_FILL_PX, TORSO_FILL_PX = 48, 8
FILL_DARKEN = 0.98
FILL_SAMPLE_BELOW_PX = 4  # the colour continued is taken this far below the part's top, away from the chin's edge
FILL_GAP_PX = 3  # a part's top counts as under the head when head pixels lie within this many pixels above it


def fill_behind_head(rgb: np.ndarray, part: np.ndarray, head: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """The colours [M, 3] and pixels (rows, cols) that continue `part` straight up behind the head.

    In every column where the part's top pixel lies just under the head, the colour a few pixels below that top is
    repeated upward over head pixels, up to `length` pixels, darkening as it goes. A head rendered over this
    background then shows neck, not the plate, where it is thin at the chin or has moved off its training pose.
    """
    height = part.shape[0]
    has_part = part.any(0)
    top = part.argmax(0)  # first part row of each column
    near_head = np.zeros_like(has_part)
    for gap in range(1, FILL_GAP_PX + 1):
        rows = top - gap
        near_head |= (rows >= 0) & head[np.clip(rows, 0, height - 1), np.arange(part.shape[1])]
    cols = np.nonzero(has_part & near_head)[0]
    top = top[cols]
    below = np.minimum(top + FILL_SAMPLE_BELOW_PX, height - 1)
    below = np.where(part[below, cols], below, top)  # a part thinner than that: its top's colour
    colour = rgb[below, cols].astype(np.float32)  # [m, 3]
    steps = np.arange(1, length + 1)[:, None]  # [L, 1]
    rows = top[None] - steps  # [L, m]
    inside = rows >= 0
    inside[inside] = head[rows[inside], np.broadcast_to(cols, rows.shape)[inside]]
    shaded = colour[None] * (FILL_DARKEN ** steps)[..., None]  # [L, m, 3]
    fill_rows, fill_cols = rows[inside], np.broadcast_to(cols, rows.shape)[inside]
    return np.round(shaded[inside]).astype(np.uint8), (fill_rows, fill_cols)


def torso_rgba(rgb: np.ndarray, labels: np.ndarray, neck_fill_px: int = 0, torso_fill_px: int = 0) -> np.ndarray:
    """[H, W, 4] RGBA: torso and neck pixels opaque, and continued up behind the head by up to `neck_fill_px` and
    `torso_fill_px` pixels (`fill_behind_head`); the rest of the head and the background transparent (and black).

    Readers blend with the alpha (ER-NeRF's loader does), so hidden colour is free: zero makes the
    PNG small and fast to write.
    """
    alpha = ((labels == TORSO) | (labels == NECK)).view(np.uint8) * np.uint8(255)
    out = cv2.merge([*cv2.split(cv2.bitwise_and(rgb, rgb, mask=alpha)), alpha])
    head = labels == HEAD
    for part, length in ((TORSO, torso_fill_px), (NECK, neck_fill_px)):  # the neck last: it wins where both reach
        if length > 0:
            colours, pixels = fill_behind_head(rgb, labels == part, head, length)
            out[pixels] = np.concatenate([colours, np.full((len(colours), 1), 255, np.uint8)], 1)
    return out


@dataclass(frozen=True)
class _Chunk:
    frames: range
    layout: SubjectLayout
    gt_dir: Path
    torso_dir: Path
    plate: np.ndarray
    jpeg_quality: int
    png_level: int
    fill_px: tuple[int, int]  # neck, torso: continued behind the head, at this crop size


def _composite_chunk(job: _Chunk) -> int:
    for i in job.frames:
        rgb = seg.read_rgb(job.layout.ori_img(i))
        labels = read_parsing(job.layout.parsing(i))
        gt = ground_truth(rgb, labels, job.plate)
        cv2.imwrite(str(job.gt_dir / f"{i}.jpg"), cv2.cvtColor(gt, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, job.jpeg_quality])
        write_png(job.torso_dir / f"{i}.png", torso_rgba(rgb, labels, *job.fill_px), level=job.png_level)
    return len(job.frames)


class CompositeStep(PreprocessStep):
    """gt_imgs/<i>.jpg and torso_imgs/<i>.png from the crop frames, the parsing and bc.jpg."""

    name = "composite"
    requires = ("headbox", "parsing", "background")

    def __init__(self, workers: int = 2, chunk_size: int = 25, jpeg_quality: int = 95, png_level: int = 4,
                 fill_behind_head: bool = True) -> None:
        self.workers, self.chunk_size, self.jpeg_quality = workers, chunk_size, jpeg_quality
        self.png_level = png_level  # zlib level of torso_imgs/: lossless at any level, only size and time change
        self.fill_behind_head = fill_behind_head

    def fill_px(self, crop_size: int) -> tuple[int, int]:
        """How far the neck and the torso are continued behind the head in a crop of `crop_size` pixels."""
        if not self.fill_behind_head:
            return 0, 0
        return round(NECK_FILL_PX * crop_size / 512), round(TORSO_FILL_PX * crop_size / 512)

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
            fill_px = self.fill_px(plate.shape[0])
            jobs = [_Chunk(r, layout, gt_dir, torso_dir, plate, self.jpeg_quality, self.png_level, fill_px)
                    for r in seg.frame_chunks(n, self.chunk_size)]
            done = 0
            with ctx.bar(n) as bar:
                for written in seg.map_ordered(_composite_chunk, jobs, self.workers):
                    done += written
                    bar.update(written)
        return {"frames": done}
