"""Background step: bc.jpg, a plate of the crop's background assembled from the frames.

Each pixel takes its colour from the frames where it is background and far from the person
(ER-NeRF picks, per pixel, the frame where it lies farthest from the foreground; here frames are
weighted by that distance and averaged, which also averages out compression noise). Pixels that
are never seen clear of the person are inpainted from the surrounding plate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ernerf.errors import ErnerfError
from ernerf.io.atomic import atomic_path
from ernerf.io.layout import SubjectLayout
from ernerf.picks import evenly_spaced
from ernerf.preprocess import segmentation as seg
from ernerf.preprocess.base import PreprocessStep, StepContext
from ernerf.preprocess.check import redo_hint
from ernerf.preprocess.parsing import BACKGROUND, read_parsing


def sample_frames(num_frames: int, max_samples: int) -> list[int]:
    """Up to `max_samples` frame indices spread evenly over the clip."""
    if num_frames <= 0:
        raise ErnerfError("the subject has no frames: re-run the ingest step (preprocess.force=[ingest]).")
    return evenly_spaced(num_frames, max_samples).tolist()


class PlateAccumulator:
    """Streams (frame, background mask) pairs into a distance-weighted mean background colour."""

    def __init__(self, margin_px: float) -> None:
        self.margin = float(margin_px)
        self._sum: np.ndarray | None = None  # [H, W, 3] float64
        self._weight: np.ndarray | None = None  # [H, W]

    def add(self, rgb: np.ndarray, background: np.ndarray) -> None:
        """Add one RGB frame [H, W, 3] and its boolean background mask [H, W]."""
        if self._sum is None:
            self._sum = np.zeros(rgb.shape, np.float64)
            self._weight = np.zeros(rgb.shape[:2], np.float64)
        # distance to the nearest person pixel: segmentation edges are uncertain, so pixels within
        # `margin` of the person get no weight and the weight ramps up over the next `margin` pixels
        dist = cv2.distanceTransform(background.astype(np.uint8), cv2.DIST_L2, 5)
        w = seg.clip((dist - self.margin) / max(self.margin, 1.0), 0.0, 1.0)
        # w * rgb in float32, as numpy's w[..., None] * rgb computes it (the same bits, tested), without numpy's
        # broadcast over the colour axis: this step runs in the main process alone
        np.add(self._sum, cv2.multiply(rgb, cv2.merge([w, w, w]), dtype=cv2.CV_32F), out=self._sum)
        self._weight += w

    @property
    def known(self) -> np.ndarray:
        """Boolean [H, W]: pixels seen clear of the person (full weight) in at least one frame."""
        if self._weight is None:
            raise ValueError("no frames were added")
        # at least one frame's worth of weight: a pixel uncovered only by a segmentation glitch in
        # one frame, close to the person, is not trusted
        return self._weight >= 1.0

    def plate(self, inpaint_radius: int) -> np.ndarray:
        """The plate as RGB uint8 [H, W, 3]; unknown pixels inpainted."""
        known = self.known
        mean = self._sum / np.maximum(self._weight, 1e-6)[..., None]
        plate = np.clip(mean, 0, 255).astype(np.uint8)
        return fill_unknown(plate, ~known, inpaint_radius)


def fill_unknown(rgb: np.ndarray, unknown: np.ndarray, radius: int) -> np.ndarray:
    """Inpaint the `unknown` pixels of an RGB image (Telea); all-unknown images become mid-grey."""
    if not unknown.any():
        return rgb
    if unknown.all():
        return np.full_like(rgb, 127)
    return cv2.inpaint(rgb, unknown.astype(np.uint8), radius, cv2.INPAINT_TELEA)


class BackgroundStep(PreprocessStep):
    """bc.jpg: background plate of the crop from the parsing's background pixels."""

    name = "background"
    requires = ("headbox", "parsing")

    def __init__(self, max_samples: int = 100, margin_px: float = 6.0, inpaint_radius: int = 5,
                 jpeg_quality: int = 95) -> None:
        self.max_samples, self.margin_px = max_samples, margin_px
        self.inpaint_radius, self.jpeg_quality = inpaint_radius, jpeg_quality

    def outputs(self, layout: SubjectLayout) -> list[Path]:
        return [layout.background]

    def run(self, ctx: StepContext) -> dict[str, Any]:
        layout = ctx.layout
        acc = PlateAccumulator(self.margin_px)
        samples = sample_frames(ctx.num_frames, self.max_samples)
        with ctx.bar(len(samples)) as bar:
            for i in samples:
                if not layout.parsing(i).exists():
                    raise ErnerfError(f"{layout.parsing(i)} is missing: {redo_hint(layout.parsing(i))}.")
                acc.add(seg.read_rgb(layout.ori_img(i)), read_parsing(layout.parsing(i)) == BACKGROUND)
                bar.update(1)
        known = float(acc.known.mean())
        if known < 0.05:
            ctx.warn(f"background: only {known:.0%} of the crop is ever seen as background; "
                     "bc.jpg is mostly inpainted.")
        plate = acc.plate(self.inpaint_radius)
        with atomic_path(layout.background) as tmp:
            cv2.imwrite(str(tmp), cv2.cvtColor(plate, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        return {"known_fraction": known}
