"""Paste rendered 512x512 head crops back into the original full-resolution frames, with soft edges.

Schemes (`postprocess.scheme=`):
- `box`: the whole head box, feathered towards the box edges.
- `face`: the face only. The face is the convex hull of the face mesh (mesh.npy, forehead to chin,
  no hair, no ears; the 68 landmarks when no mesh), grown by `dilate_px` so an opened jaw stays
  inside, and cut to the head + neck parsing classes so no background is pasted. Hair is left
  original: a NeRF renders hair worst (it is thin and moves), and the face carries the lip sync.
- `face_neck`: the head and neck parsing classes (hair included), grown by `dilate_px`.

Soft edges: `blend=feather` ramps alpha from 0 at the mask border to 1 at `feather_px` inside
(smoothstep of a distance transform); `blend=seamless` uses Poisson blending (cv2.seamlessClone)
inside the same mask, which also evens out colour shifts between render and frame.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from ernerf.errors import ErnerfError
from ernerf.preprocess.check import redo_hint

# infer.py's paste-back settings (its postprocess group's default): what a viewer sees of a render
INFER_PASTE = Path(__file__).resolve().parents[2] / "conf" / "postprocess" / "default.yaml"
SCHEMES = ("box", "face", "face_neck")
BLENDS = ("feather", "seamless")
HEAD_BGR = (255, 0, 0)  # parsing colours as cv2.imread returns them (docs/dataset.md)
NECK_BGR = (0, 255, 0)


@dataclass(frozen=True)
class HeadBox:
    """Square head box in original-frame pixels; may extend past the frame."""

    x1: int
    y1: int
    x2: int
    y2: int

    @classmethod
    def load(cls, path: Path | str) -> "HeadBox":
        """Read head_bbox.json."""
        path = Path(path)
        if not path.is_file():
            raise ErnerfError(f"{path} is missing: {redo_hint(path)}.")
        d = json.loads(path.read_text())
        return cls(int(d["x1"]), int(d["y1"]), int(d["x2"]), int(d["y2"]))

    @property
    def width(self) -> int:
        return self.x2 - self.x1

    @property
    def height(self) -> int:
        return self.y2 - self.y1


@dataclass(frozen=True)
class _Placement:
    """Where the box overlaps the frame: slices into the frame and into the box-sized patch."""

    frame: tuple[slice, slice]
    patch: tuple[slice, slice]


def _placement(box: HeadBox, frame_hw: tuple[int, int]) -> _Placement:
    h, w = frame_hw
    fx1, fy1, fx2, fy2 = max(box.x1, 0), max(box.y1, 0), min(box.x2, w), min(box.y2, h)
    if fx1 >= fx2 or fy1 >= fy2:
        raise ErnerfError(f"head box {box} lies outside the {w}x{h} frame: re-run the headbox preprocessing step.")
    frame = (slice(fy1, fy2), slice(fx1, fx2))
    patch = (slice(fy1 - box.y1, fy2 - box.y1), slice(fx1 - box.x1, fx2 - box.x1))
    return _Placement(frame, patch)


def _resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to (w, h): area filter when shrinking, cubic when enlarging."""
    shrink = size[0] < img.shape[1]
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)


def crop_frame(frame: np.ndarray, box: HeadBox, size: int = 512) -> np.ndarray:
    """Crop the head box out of a frame (edge-replicated past the border) and scale to size x size."""
    h, w = frame.shape[:2]
    pad = max(0, -box.x1, -box.y1, box.x2 - w, box.y2 - h)
    padded = cv2.copyMakeBorder(frame, pad, pad, pad, pad, cv2.BORDER_REPLICATE) if pad else frame
    patch = padded[box.y1 + pad:box.y2 + pad, box.x1 + pad:box.x2 + pad]
    return _resize(patch, (size, size))


@dataclass(frozen=True)
class PaletteMap:
    """A parsing map as its palette PNG holds it: indices uint8 [H, W] and the 256 palette colours uint8 [256, 3] BGR
    (black past the file's own, as a PNG decoder expands them). Its classes are looked up in the palette, not per pixel.
    """

    indices: np.ndarray
    palette_bgr: np.ndarray


def read_parsing_map(path: Path | str) -> PaletteMap | np.ndarray | None:
    """parsing/<i>.png as `parsing_mask` takes it: a PaletteMap for a palette PNG (the pipeline writes those), else
    what cv2.imread reads: BGR pixels (a palette with transparency too: its expansion is the decoder's business), or
    None for a file it cannot read."""
    try:
        with Image.open(path) as img:
            if img.mode == "P" and "transparency" not in img.info:
                palette = np.zeros((256, 3), np.uint8)
                colours = np.asarray(img.getpalette("RGB"), np.uint8).reshape(-1, 3)[:256]
                palette[:len(colours)] = colours[:, ::-1]
                return PaletteMap(np.asarray(img), palette)
    except (OSError, ValueError):  # damaged: whatever cv2.imread makes of it, as before
        pass
    return cv2.imread(str(path))


def parsing_mask(parsing: PaletteMap | np.ndarray, classes: tuple[tuple[int, int, int], ...]) -> np.ndarray:
    """Boolean mask of the given parsing colours (BGR) in a PaletteMap or in BGR pixels as cv2.imread reads
    parsing/<i>.png. # [H,W]"""
    if isinstance(parsing, PaletteMap):  # the pixels' test on each palette colour, then each pixel's colour's answer
        return cv2.LUT(parsing.indices, _colour_mask(parsing.palette_bgr[None], classes)) > 0
    return _colour_mask(parsing, classes) > 0


def _colour_mask(bgr: np.ndarray, classes: tuple[tuple[int, int, int], ...]) -> np.ndarray:
    """uint8 [H,W]: 255 where a BGR colour [H,W,3] is one of `classes`, 0 elsewhere."""
    mask = np.zeros(bgr.shape[:2], dtype=np.uint8)
    for colour in classes:  # every channel within 63 levels (cv2.inRange: one pass, where numpy needs int16 copies)
        mask |= cv2.inRange(bgr, tuple(c - 63.0 for c in colour), tuple(c + 63.0 for c in colour))
    return mask


def hull_mask(points: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Filled convex hull of 2D points (crop pixels). # [K,2] -> bool [H,W]"""
    hull = cv2.convexHull(np.round(points[:, :2]).astype(np.int32))
    mask = np.zeros(hw, dtype=np.uint8)
    cv2.fillConvexPoly(mask, hull, 1)
    return mask.astype(bool)


def mask_bounds(mask: np.ndarray) -> tuple[slice, slice] | None:
    """Rows and columns of a mask's nonzero pixels (their bounding box); None if there are none."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def dilate(mask: np.ndarray, px: int) -> np.ndarray:
    """Grow a boolean mask by `px` pixels (elliptic element)."""
    if px <= 0:
        return mask
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * px + 1, 2 * px + 1))
    return cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)


def feather_alpha(mask: np.ndarray, feather_px: float) -> np.ndarray:
    """Alpha 0 on and outside the mask border, rising smoothly to 1 at `feather_px` inside. # [H,W] float32

    The smoothstep t * t * (3 - 2 t) of t = clip(dist / feather_px, 0, 1), each step the float32 operation numpy's
    expression made, into two buffers instead of a fresh array per step (the allocations cost more than the maths).
    Distances are taken within the mask's bounds, a ring of zeros around them (the pixels past them, or the image
    edge, which counts as border): a pixel's nearest zero outside that ring is never nearer than one on it (the
    distance grows with each coordinate's offset), and a path to one on it stays within the bounds. Outside, alpha is 0.
    """
    alpha, bounds = np.zeros(mask.shape, np.float32), mask_bounds(mask)
    if bounds is None:
        return alpha
    inside = cv2.copyMakeBorder(mask[bounds].astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    dist = cv2.distanceTransform(inside, cv2.DIST_L2, 5)[1:-1, 1:-1]
    t = np.divide(dist, max(feather_px, 1e-6))
    np.clip(t, 0.0, 1.0, out=t)
    rising = np.multiply(t, 2.0)
    np.subtract(3.0, rising, out=rising)
    np.multiply(t, t, out=t)
    np.multiply(t, rising, out=alpha[bounds])
    return alpha


_SCRATCH = threading.local()  # per-thread float buffers of _blend_into (paste-back runs on several threads)


def _scratch(slot: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A buffer of `shape` reused by this thread: fresh 14 MB temporaries cost more in page faults than the maths."""
    size, buffers = int(np.prod(shape)), _SCRATCH.__dict__.setdefault("buffers", {})
    buf = buffers.get((slot, dtype))
    if buf is None or buf.size < size:
        buf = buffers[(slot, dtype)] = np.empty(size, dtype)
    return buf[:size].reshape(shape)


def _blend_into(region: np.ndarray, patch: np.ndarray, alpha: np.ndarray) -> None:
    """region <- region + alpha * (patch - region), rounded half up, in place. # uint8 [h,w,3], [h,w,3], [h,w] in [0,1]

    Only the bounding box of alpha > 0 is computed: where alpha is 0 the sum is the region itself. The float
    steps are single IEEE operations in alpha's dtype, as numpy's expression was (cv2 runs them without the
    stride-0 broadcast that made numpy's product 8 ms, and into reused buffers); with alpha in [0, 1] the sum
    lies between region and patch, so no clip is needed before truncating (sum + 0.5) to uint8.
    """
    bounds = mask_bounds(alpha)
    if bounds is None:
        return
    ys, xs = bounds
    dtype = np.result_type(alpha.dtype, np.float32)  # float32, or float64 for a float64 alpha, as numpy promoted
    depth = cv2.CV_64F if dtype == np.float64 else cv2.CV_32F
    region, a = region[ys, xs], alpha[ys, xs].astype(dtype, copy=False)
    mixed, a3 = _scratch(0, region.shape, dtype), _scratch(1, region.shape, dtype)
    cv2.subtract(patch[ys, xs], region, dst=mixed, dtype=depth)  # uint8 operands, exact float difference
    cv2.multiply(mixed, cv2.merge([a, a, a], dst=a3), dst=mixed)
    cv2.add(mixed, region, dst=mixed, dtype=depth)
    mixed += 0.5
    region[...] = mixed


class PasteBack:
    """Blend rendered crops into original frames at the subject's head box."""

    def __init__(self, scheme: str = "face_neck", blend: str = "feather", feather_px: float = 16.0,
                 dilate_px: int = 8) -> None:
        if scheme not in SCHEMES:
            raise ErnerfError(f"unknown paste-back scheme {scheme!r}: "
                              f"use postprocess.scheme= one of {', '.join(SCHEMES)}.")
        if blend not in BLENDS:
            raise ErnerfError(f"unknown blend {blend!r}: use postprocess.blend= one of {', '.join(BLENDS)}.")
        self.scheme, self.blend = scheme, blend
        self.feather_px, self.dilate_px = feather_px, dilate_px

    @property
    def needs_face_points(self) -> bool:
        """Whether `alpha` reads its face points (the face scheme's hull); the other schemes take None."""
        return self.scheme == "face"

    def region(self, parsing: PaletteMap | np.ndarray | None, face_points: np.ndarray | None,
               size: int = 512) -> np.ndarray:
        """Boolean mask [size,size] of crop pixels to take from the render, for this scheme; `parsing` as
        `read_parsing_map` reads it (or BGR pixels)."""
        if self.scheme == "box":
            return np.ones((size, size), dtype=bool)
        if parsing is None:
            raise ErnerfError(f"postprocess.scheme={self.scheme} needs the parsing maps (parsing/<i>.png): run "
                              "`python preprocess.py subject=<name>` or use postprocess.scheme=box.")
        person = dilate(parsing_mask(parsing, (HEAD_BGR, NECK_BGR)), self.dilate_px)
        if self.scheme == "face_neck":
            return person
        if face_points is None:
            raise ErnerfError("postprocess.scheme=face needs the face mesh (mesh.npy) or landmarks (ori_imgs/<i>.lms): "
                              "run `python preprocess.py subject=<name>` or use postprocess.scheme=face_neck.")
        return dilate(hull_mask(face_points, (size, size)), self.dilate_px) & person

    def alpha(self, parsing: PaletteMap | np.ndarray | None, face_points: np.ndarray | None,
              size: int = 512) -> np.ndarray:
        """Soft alpha [size,size] in [0,1]: the scheme's region feathered towards its border."""
        return feather_alpha(self.region(parsing, face_points, size), self.feather_px)

    def paste(self, frame: np.ndarray, crop: np.ndarray, alpha: np.ndarray, box: HeadBox) -> np.ndarray:
        """Return a copy of `frame` [H,W,3] uint8 with `crop` [S,S,3] uint8 blended in at `box` by `alpha` [S,S]."""
        place = _placement(box, frame.shape[:2])
        patch = _resize(crop, (box.width, box.height))[place.patch]
        a = _resize(alpha, (box.width, box.height))[place.patch].clip(0.0, 1.0)
        out = frame.copy()
        if self.blend == "seamless":
            return self._seamless(out, patch, a, place)
        _blend_into(out[place.frame], patch, a)
        return out

    def _seamless(self, out: np.ndarray, patch: np.ndarray, a: np.ndarray, place: _Placement) -> np.ndarray:
        mask = np.zeros(out.shape[:2], dtype=np.uint8)
        mask[place.frame] = (a > 0.5).astype(np.uint8) * 255
        mask[[0, -1], :] = 0  # seamlessClone needs the mask strictly inside the frame
        mask[:, [0, -1]] = 0
        if not mask.any():
            return out
        src = out.copy()
        src[place.frame] = patch
        x, y, w, h = cv2.boundingRect(mask)
        return cv2.seamlessClone(src, out, mask, (x + w // 2, y + h // 2), cv2.NORMAL_CLONE)

    def paste_depth(self, frame_hw: tuple[int, int], depth: np.ndarray, alpha: np.ndarray,
                    box: HeadBox) -> np.ndarray:
        """Full-frame depth [H,W] float32: the rendered depth where alpha > 0.5, 0 elsewhere."""
        place = _placement(box, frame_hw)
        size = (box.width, box.height)
        d = cv2.resize(depth.astype(np.float32), size, interpolation=cv2.INTER_LINEAR)[place.patch]
        a = cv2.resize(alpha.astype(np.float32), size, interpolation=cv2.INTER_LINEAR)[place.patch]
        out = np.zeros(frame_hw, dtype=np.float32)
        out[place.frame] = np.where(a > 0.5, d, 0.0)
        return out


def paste_weights(data: Any, frames: np.ndarray, height: int, width: int, settings: Path = INFER_PASTE) -> np.ndarray:
    """The paste-back's alpha (`settings`: infer.py's by default) of each of a subject's `frames` (SubjectData: its
    parsing maps and face mesh), at the render size [T, H, W]."""
    from omegaconf import OmegaConf

    pp = OmegaConf.load(settings)
    paste = PasteBack(pp.scheme, pp.blend, pp.feather_px, pp.dilate_px)
    mesh = np.load(data.layout.mesh, mmap_mode="r") if data.layout.mesh.is_file() else None
    out = []
    for f in frames.tolist():
        img_id = int(data.img_ids[f])
        points = None if mesh is None else np.asarray(mesh[img_id, :, :2], np.float32)
        alpha = paste.alpha(read_parsing_map(data.layout.parsing(img_id)), points)
        out.append(cv2.resize(alpha.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA))
    return np.stack(out)
