"""Matting step: alpha.mp4 (person matte of the crop) and input.mp4 (the person over a chosen background).

Each frame's selfie-segmentation mask is cut to the person attached to the face and snapped to
the frame's edges with a guided filter (in worker processes). It still flickers at the
silhouette, so it is then stabilised over time by an exponential moving average whose rate rises
where the image itself changes: a moving head is followed at once, a still silhouette stops
shimmering.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ernerf.errors import ErnerfError
from ernerf.io.layout import SubjectLayout
from ernerf.io.video import VideoWriter
from ernerf.preprocess import segmentation as seg
from ernerf.preprocess.base import PreprocessStep, StepContext
from ernerf.preprocess.parsing import ParsingParams, face_hull, load_mesh, person_mask


def refine_edges(rgb: np.ndarray, mask: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """Snap a soft mask [H, W] in [0, 1] to the frame's edges with a guided filter (grey guide)."""
    if radius <= 0:
        return mask.astype(np.float32)
    # a grey guide is ~3x cheaper than a colour one and the silhouette edges are luminance edges
    guide = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
    return seg.clip(cv2.ximgproc.guidedFilter(guide, mask.astype(np.float32), radius, eps), 0.0, 1.0)


class TemporalMatte:
    """Motion-guarded temporal smoothing of soft masks: an EMA whose rate rises where the image changes."""

    def __init__(self, ema_min: float = 0.15, motion_scale: float = 20.0) -> None:
        self.ema_min, self.motion_scale = ema_min, motion_scale
        self._state: np.ndarray | None = None  # smoothed mask, [H, W] float32 in [0, 1]
        self._grey: np.ndarray | None = None  # uint8: a difference of whole grey levels is exact in it

    def __call__(self, rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """One frame [H, W, 3] uint8 and its mask [H, W] float in [0, 1] -> smoothed alpha [H, W] float32 (a new
        array each call)."""
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        if self._state is None or self._state.shape != mask.shape:
            self._state = mask.astype(np.float32)
        else:
            # image change, spread a little so the whole moving edge counts as moving. The rate is
            # ema_min + motion / scale, at most 1 (motion >= 0 keeps it above ema_min), computed in
            # place: this runs in the main process, the serial part of the step
            rate = cv2.blur(cv2.absdiff(grey, self._grey).astype(np.float32), (9, 9))
            rate *= 1.0 / self.motion_scale
            rate += self.ema_min
            np.minimum(rate, 1.0, out=rate)
            step = np.subtract(mask, self._state, dtype=np.float32)
            step *= rate
            step += self._state
            self._state = step
        self._grey = grey
        return self._state


class FlickerMeter:
    """Mean absolute frame-to-frame change of a matte in a band around a reference silhouette.

    Masks are float in [0, 1] or uint8 0-255 (taken as value / 255, so either gives the same figure)."""

    def __init__(self, band_px: int = 6) -> None:
        self.band_px = band_px
        self._prev: dict[str, np.ndarray] = {}
        self._sum: dict[str, float] = {}
        self._count = 0
        self._prev_band: np.ndarray | None = None
        k = 2 * band_px + 1
        self._kernel = np.ones((k, k), np.uint8)  # square: separable, fast

    def update(self, reference: np.ndarray, **mattes: np.ndarray) -> None:
        """Add one frame: the reference mask [H, W] that defines the band, and named mattes."""
        band = self._band(reference > (127 if reference.dtype == np.uint8 else 0.5))
        if self._prev_band is not None:
            both = cv2.bitwise_or(band, self._prev_band)
            for name, m in mattes.items():
                # cv2.mean over a mask: no boolean-indexed copy of the band's pixels
                change = cv2.mean(cv2.absdiff(m, self._prev[name]), mask=both)[0]
                self._sum[name] = self._sum.get(name, 0.0) + change * (1.0 / 255.0 if m.dtype == np.uint8 else 1.0)
            self._count += 1
        self._prev_band = band
        self._prev = {name: m.copy() for name, m in mattes.items()}

    def _band(self, mask: np.ndarray) -> np.ndarray:
        m = mask.view(np.uint8)
        return cv2.subtract(cv2.dilate(m, self._kernel), cv2.erode(m, self._kernel))

    def result(self) -> dict[str, float]:
        """Mean change per matte over all frame pairs (same units as the mattes)."""
        return {name: total / max(self._count, 1) for name, total in self._sum.items()}


def target_background(spec: Sequence[int] | str | Path, shape: tuple[int, int]) -> np.ndarray:
    """The configured backdrop as RGB uint8 [H, W, 3]: an [R, G, B] colour or an image file (resized)."""
    h, w = shape
    if isinstance(spec, (str, Path)):
        path = Path(spec).expanduser()
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise ErnerfError(f"preprocess.steps.matting.background={spec!r}: no readable image there. "
                              "Give an image path or a colour like [255, 255, 255].")
        return cv2.cvtColor(cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
    colour = [int(c) for c in spec]
    if len(colour) != 3 or not all(0 <= c <= 255 for c in colour):
        raise ErnerfError(f"preprocess.steps.matting.background={list(spec)!r} is not a colour: "
                          "give [R, G, B] with values 0-255, or an image path.")
    return np.broadcast_to(np.array(colour, np.uint8), (h, w, 3)).copy()


def over(rgb: np.ndarray, alpha: np.ndarray, backdrop: np.ndarray) -> np.ndarray:
    """Composite RGB uint8 [H, W, 3] with alpha [H, W] in [0, 1] over a uint8 backdrop; uint8 out."""
    a = np.ascontiguousarray(alpha, dtype=np.float32)
    return cv2.blendLinear(rgb, backdrop, a, 1.0 - a)


# ---------------------------------------------------------------- per-process worker

_MODELS: dict[str, seg.PersonSegmenter] = {}


def gate_to_person(prob: np.ndarray, mesh: np.ndarray, feather_px: int = 4) -> np.ndarray:
    """Zero the soft mask [H, W] outside the person attached to the face (mesh [478, >=2]): drops
    detached false positives (flags, posters) while keeping the soft edge of the silhouette."""
    xy = mesh[:, :2].astype(np.float32)
    person = person_mask(prob, face_hull(prob.shape, xy), ParsingParams())
    gate = cv2.dilate(person.astype(np.uint8), seg.disk(feather_px)).astype(np.float32)
    gate = cv2.blur(gate, (2 * feather_px + 1, 2 * feather_px + 1))
    return prob * gate


@dataclass(frozen=True)
class _Chunk:
    frames: range
    ori_dir: Path
    mesh: np.ndarray  # [len(frames), 478, 3]
    guided_radius: int
    guided_eps: float
    mask_cache: Path  # the parsing step's selfie masks, when it left them


def _person_model() -> seg.PersonSegmenter:
    if "person" not in _MODELS:  # one graph per process, reused over its chunks
        _MODELS["person"] = seg.PersonSegmenter()
    return _MODELS["person"]


def _segment_chunk(job: _Chunk) -> tuple[np.ndarray, np.ndarray]:
    """Raw selfie masks and their gated, edge-refined versions of a run of frames, as uint8 [k, H, W]."""
    cached = seg.MaskCache(job.mask_cache).read(job.frames)  # parsing ran the same model on the same crops
    raw, refined = [], []  # uint8 quarters what crosses the process pipe
    for k, i in enumerate(job.frames):
        rgb = seg.read_rgb(job.ori_dir / f"{i}.jpg")
        prob = _person_model()(rgb) if cached is None else cached[k].astype(np.float32) * (1.0 / 255.0)
        raw.append(seg.mask_to_u8(prob) if cached is None else cached[k])  # the cache holds mask_to_u8's values
        refined.append(seg.mask_to_u8(refine_edges(rgb, gate_to_person(prob, job.mesh[k]), job.guided_radius,
                                                   job.guided_eps)))
    return np.stack(raw), np.stack(refined)


class MattingStep(PreprocessStep):
    """alpha.mp4 (temporally stable person matte) and input.mp4 (person over the configured background)."""

    name = "matting"
    requires = ("headbox", "landmarks", "parsing")  # parsing: the person masks it leaves in .cache/

    def __init__(self, background: Sequence[int] | str = (255, 255, 255), workers: int = 2, chunk_size: int = 25,
                 ema_min: float = 0.15, motion_scale: float = 20.0, guided_radius: int = 6,
                 guided_eps: float = 1e-3, crf: int = 18, preset: str = "superfast") -> None:
        self.background = background if isinstance(background, str) else list(background)
        target_background(self.background, (2, 2))  # a bad colour or path fails now, not after segmentation
        self.workers, self.chunk_size, self.crf = workers, chunk_size, crf
        self.preset = preset  # x264: nothing downstream decodes these videos, so speed beats file size
        self.ema_min, self.motion_scale = ema_min, motion_scale
        self.guided_radius, self.guided_eps = guided_radius, guided_eps

    def outputs(self, layout: SubjectLayout) -> list[Path]:
        return [layout.alpha_video, layout.matted_video]

    def run(self, ctx: StepContext) -> dict[str, Any]:
        layout, n = ctx.layout, ctx.num_frames
        fps = float(ctx.meta().get("fps", 25))
        backdrop: np.ndarray | None = None
        matte, meter = TemporalMatte(self.ema_min, self.motion_scale), FlickerMeter()
        mesh = load_mesh(layout, n)
        cache = seg.person_mask_cache(layout.root)
        jobs = [_Chunk(r, layout.ori_imgs, mesh[r.start:r.stop], self.guided_radius, self.guided_eps, cache.folder)
                for r in seg.frame_chunks(n, self.chunk_size)]
        with VideoWriter(layout.alpha_video, fps=fps, crf=self.crf, preset=self.preset) as alpha_out, \
                VideoWriter(layout.matted_video, fps=fps, crf=self.crf, preset=self.preset) as matted_out, \
                ctx.bar(n) as bar:
            for job, (raws, refined) in zip(jobs, seg.map_ordered(_segment_chunk, jobs, self.workers)):
                for i, raw8, refined8 in zip(job.frames, raws, refined):
                    rgb = seg.read_rgb(layout.ori_img(i))
                    if backdrop is None:
                        backdrop = target_background(self.background, rgb.shape[:2])
                    alpha = matte(rgb, refined8.astype(np.float32) / 255.0)
                    meter.update(raw8, raw=raw8, alpha=alpha)
                    alpha_out.write((alpha * 255.0 + 0.5).astype(np.uint8))
                    matted_out.write(over(rgb, alpha, backdrop))
                    bar.update(1)
        cache.clear()  # used up: a forced re-run of matting alone segments again
        flicker = meter.result()
        return {"flicker_raw": flicker.get("raw", 0.0), "flicker_alpha": flicker.get("alpha", 0.0)}
