"""Parsing step: per-frame head / neck / torso / background maps in ER-NeRF's colour code.

The mediapipe backend combines three embedded models: selfie segmentation (person vs background),
the face mesh of the landmarks step (face oval -> head, grown upwards and sideways for hair and
ears) and pose shoulders (where the neck ends). Neck pixels are the skin-coloured person pixels in a
band from the jaw down to the shoulder line; the rest of the person below the head is torso.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ernerf.errors import ErnerfError
from ernerf.io.atomic import atomic_dir
from ernerf.io.layout import SubjectLayout
from ernerf.io.png import decode_palette_png, write_png
from ernerf.preprocess import segmentation as seg
from ernerf.preprocess.base import PreprocessStep, StepContext
from ernerf.preprocess.check import redo_hint

BACKGROUND, HEAD, NECK, TORSO = 0, 1, 2, 3
# on-disk RGB colour of each label (ER-NeRF's code; read back with cv2 it is BGR head [255, 0, 0] ...)
PALETTE_RGB = np.array([(255, 255, 255), (0, 0, 255), (0, 255, 0), (255, 0, 0)], np.uint8)
BACKENDS = ("mediapipe", "bisenet")


@dataclass(frozen=True)
class ParsingParams:
    """Geometry and thresholds of the mediapipe parsing (lengths relative to the face size)."""

    person_threshold: float = 0.5  # selfie-segmentation probability that counts as person
    hair_scale: float = 2.2  # the face oval grown by this factor above cheek level bounds hair and ears
    chin_margin: float = 0.03  # face heights added below the mesh's chin line (the mesh sits inside the edge)
    neck_width: float = 0.85  # neck band width at the shoulders, in face widths
    neck_length: float = 0.6  # chin-to-neck-base length in face heights when the shoulders are not visible
    neck_min_length: float = 0.35  # bounds on that length when it comes from the shoulders
    neck_max_length: float = 1.0
    skin_distance: float = 4.5  # Mahalanobis distance in CrCb under which a pixel counts as skin
    clean_radius: int = 3  # morphology radius (px) that removes specks and closes cracks


def labels_to_rgb(labels: np.ndarray) -> np.ndarray:
    """[H, W] label map -> [H, W, 3] RGB image in ER-NeRF's colour code."""
    return PALETTE_RGB[labels]


def write_parsing(path: Path | str, labels: np.ndarray) -> None:
    """Write a label map [H, W] as a palette PNG: read back as RGB (cv2, PIL) it is labels_to_rgb(labels),
    at a third of the bytes to filter and compress."""
    write_png(path, labels, palette=PALETTE_RGB)


def read_parsing(path: Path | str) -> np.ndarray:
    """Read a parsing PNG back into a [H, W] uint8 label map (unknown colours count as background)."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        data = b""
    palette_image = decode_palette_png(data)
    if palette_image is not None:  # the palette maps this pipeline writes: label the palette, not every pixel
        indices, palette = palette_image
        return cv2.LUT(indices, np.pad(_labels_of_bgr(palette[None, :, ::-1])[0], (0, 256 - len(palette))))
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if bgr is None:
        raise ErnerfError(f"cannot read parsing map {path}: {redo_hint(path)}.")
    return _labels_of_bgr(bgr)


def _labels_of_bgr(bgr: np.ndarray) -> np.ndarray:
    """[..., 3] BGR colours -> [...] labels: one bit per channel (B=1, G=2, R=4) indexes a table, head is pure blue,
    neck green, torso red."""
    code = (bgr[..., 0] >> 7) | ((bgr[..., 1] >> 7) << 1) | ((bgr[..., 2] >> 7) << 2)
    return _CODE_TO_LABEL[code]


_CODE_TO_LABEL = np.full(8, BACKGROUND, np.uint8)
_CODE_TO_LABEL[[1, 2, 4]] = HEAD, NECK, TORSO


@dataclass(frozen=True)
class FaceFrame:
    """Face-aligned frame from the mesh: centre, unit up/right vectors and face size in pixels."""

    centre: np.ndarray  # [2]
    up: np.ndarray  # [2], towards the forehead
    right: np.ndarray  # [2], towards the image right for a frontal face
    width: float
    height: float

    @staticmethod
    def from_mesh(xy: np.ndarray) -> "FaceFrame":
        """Build from [478, 2] mesh pixels."""
        up = xy[seg.FOREHEAD] - xy[seg.CHIN]
        height = float(np.linalg.norm(up)) + 1e-6
        up = up / height
        right = np.array([-up[1], up[0]], np.float32)
        centre = 0.5 * (xy[seg.CHEEK_LEFT] + xy[seg.CHEEK_RIGHT])
        width = float(np.linalg.norm(xy[seg.CHEEK_RIGHT] - xy[seg.CHEEK_LEFT])) + 1e-6
        return FaceFrame(centre.astype(np.float32), up.astype(np.float32), right, width, height)

    def v(self, pts: np.ndarray) -> np.ndarray:
        """Height of points [..., 2] above the centre along `up` (px)."""
        return (pts - self.centre) @ self.up


def _poly_mask(shape: tuple[int, int], poly: np.ndarray) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    cv2.fillPoly(mask, [np.round(poly).astype(np.int32)], 1)
    return mask.astype(bool)


def head_region(shape: tuple[int, int], xy: np.ndarray, face: FaceFrame, p: ParsingParams) -> np.ndarray:
    """Where head pixels may be: the face oval, grown above the jaw angles to take in hair and ears."""
    oval = xy[list(seg.FACE_OVAL)]
    v_jaw = float(np.mean(face.v(xy[[seg.JAW_LEFT, seg.JAW_RIGHT]])))
    # growth blends from 1 at the jaw angles to hair_scale at cheek level and above, so the chin
    # and jaw keep the mesh's outline while the top of the head may carry hair
    t = np.clip((face.v(oval) - v_jaw) / max(-v_jaw, 1.0), 0.0, 1.0)[:, None]
    scale = 1.0 + (p.hair_scale - 1.0) * t
    grown = face.centre + scale * (oval - face.centre)
    grown -= (1.0 - t) * p.chin_margin * face.height * face.up
    return _poly_mask(shape, grown)


def face_hull(shape: tuple[int, int], xy: np.ndarray) -> np.ndarray:
    """Convex hull of all mesh points: always head, even where the person mask misses it."""
    return _poly_mask(shape, cv2.convexHull(xy.astype(np.float32))[:, 0])


def neck_region(shape: tuple[int, int], xy: np.ndarray, face: FaceFrame, shoulders: np.ndarray | None,
                p: ParsingParams) -> np.ndarray:
    """A band from the jaw angles down to the shoulder line (or a face-relative length), neck wide."""
    jaw = xy[[seg.JAW_LEFT, seg.JAW_RIGHT]]
    chin = xy[seg.CHIN]
    length = p.neck_length * face.height
    if shoulders is not None:
        # pose shoulders are noisy where the crop is padded; keep the neck anatomically plausible
        drop = float(face.v(chin) - face.v(shoulders.mean(0)))
        length = float(np.clip(drop, p.neck_min_length * face.height, p.neck_max_length * face.height))
    base = chin - length * face.up
    half = 0.5 * p.neck_width * face.width * face.right
    poly = np.array([jaw[0], jaw[1], base + half, base - half])
    return _poly_mask(shape, poly)


def skin_model(rgb: np.ndarray, xy: np.ndarray, ycc: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """Mean and inverse covariance of CrCb skin colour sampled on the cheeks and forehead (`ycc`: the frame in YCrCb)."""
    ycc = cv2.cvtColor(rgb, cv2.COLOR_RGB2YCrCb) if ycc is None else ycc
    h, w = rgb.shape[:2]
    samples = []
    for x, y in np.round(xy[list(seg.SKIN_POINTS)]).astype(int):
        if 3 <= x < w - 3 and 3 <= y < h - 3:
            samples.append(ycc[y - 3:y + 4, x - 3:x + 4, 1:].reshape(-1, 2))
    if not samples:
        return None
    crcb = np.concatenate(samples).astype(np.float32)
    # the floor on the covariance keeps a very uniform face from rejecting its own neck's shading
    (a, b), (_, d) = np.cov(crcb.T) + np.eye(2) * 4.0
    icov = np.array([[d, -b], [-b, a]], np.float32) / (a * d - b * b)  # 2x2 inverse without LAPACK threads
    return crcb.mean(0), icov


def skin_mask(rgb: np.ndarray, model: tuple[np.ndarray, np.ndarray], region: np.ndarray, max_dist: float,
              ycc: np.ndarray | None = None) -> np.ndarray:
    """Pixels of `region` whose CrCb colour lies within `max_dist` Mahalanobis units of the skin model."""
    mean, icov = model
    out = np.zeros(region.shape, bool)
    x, y, w, h = cv2.boundingRect(region.astype(np.uint8))  # the neck band is a small part of the frame
    if w == 0 or h == 0:
        return out
    window = (slice(y, y + h), slice(x, x + w))
    ycc = cv2.cvtColor(rgb[window], cv2.COLOR_RGB2YCrCb) if ycc is None else ycc[window]
    crcb = ycc[..., 1:].astype(np.float32) - mean
    out[window] = region[window] & (mahalanobis2(crcb, icov) < max_dist ** 2)
    return out


def mahalanobis2(v: np.ndarray, icov: np.ndarray) -> np.ndarray:
    """v^T icov v of 2-vectors v [..., 2] (float32) -> [...]: einsum("...i,ij,...j", v, icov, v) written out term by
    term in its order, so to the same bits, without einsum's generic loop over three operands."""
    x, y = v[..., 0], v[..., 1]
    return ((x * icov[0, 0]) * x + (x * icov[0, 1]) * y) + (y * icov[1, 0]) * x + (y * icov[1, 1]) * y


def person_mask(prob: np.ndarray, seed: np.ndarray, p: ParsingParams) -> np.ndarray:
    """Clean binary person mask: thresholded, de-speckled, holes filled, attached to the face or the bottom edge."""
    h, w = prob.shape
    # the selfie model predicts at 256x256: cleaning at half size loses no detail and costs a quarter
    small = cv2.resize(prob, (w // 2, h // 2), interpolation=cv2.INTER_AREA) > p.person_threshold
    small_seed = cv2.resize(seed.astype(np.uint8), (w // 2, h // 2), interpolation=cv2.INTER_NEAREST).astype(bool)
    person = seg.open_close(small, max(1, p.clean_radius // 2))
    anchor = small_seed.copy()
    anchor[-2:] = True  # the body leaves the crop at the bottom
    clean = seg.fill_holes(seg.components_touching(person | small_seed, anchor))
    # the selfie model's mask is itself a 256x256 prediction upsampled, so this loses ~1 px at most
    full = cv2.resize(clean.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR) > 0.5
    return full | seed


def parse_frame(rgb: np.ndarray, prob: np.ndarray, mesh: np.ndarray, shoulders: np.ndarray | None,
                p: ParsingParams = ParsingParams()) -> np.ndarray:
    """One frame [H, W, 3] RGB + person probability + mesh [478, >=2] -> [H, W] uint8 labels."""
    shape = rgb.shape[:2]
    xy = mesh[:, :2].astype(np.float32)
    face = FaceFrame.from_mesh(xy)
    hull = face_hull(shape, xy)
    person = person_mask(prob, hull, p)
    head = (person & head_region(shape, xy, face, p)) | hull
    head = seg.components_touching(seg.open_close(head, p.clean_radius), hull) | hull
    rest = person & ~head
    neck = _neck(rgb, xy, face, shoulders, rest, head, p)
    torso = seg.drop_small_components(rest & ~neck, min_area=int(0.002 * rest.size))
    # slivers left between the head and the neck band belong to their neighbour, not to the background
    islands = rest & ~neck & ~torso
    near_neck = cv2.dilate(neck.astype(np.uint8), seg.disk(2)).astype(bool)
    grow_neck = seg.components_touching(islands, near_neck)
    neck |= grow_neck
    head |= islands & ~grow_neck
    labels = np.zeros(shape, np.uint8)
    labels[torso] = TORSO
    labels[neck] = NECK
    labels[head] = HEAD
    return labels


def _neck(rgb: np.ndarray, xy: np.ndarray, face: FaceFrame, shoulders: np.ndarray | None, rest: np.ndarray,
          head: np.ndarray, p: ParsingParams) -> np.ndarray:
    band = rest & neck_region(rest.shape, xy, face, shoulders, p)
    ycc = cv2.cvtColor(rgb, cv2.COLOR_RGB2YCrCb)
    model = skin_model(rgb, xy, ycc)
    if model is None:
        return band
    return neck_from_skin(skin_mask(rgb, model, band, p.skin_distance, ycc), band, head, p.clean_radius)


def neck_from_skin(skin: np.ndarray, band: np.ndarray, head: np.ndarray, radius: int) -> np.ndarray:
    """The neck [H, W] bool: skin pixels of the band (all [H, W] bool), cleaned at `radius`, in blobs that touch the
    head's lower edge, holes filled.

    Worked in the band's box grown by 2 * radius + 2 px: every pixel the opening, closing and the seed's dilation
    of a band pixel look at lies in it, and outside the band the masks are empty, so the result is the whole
    frame's (tested) at the cost of a window a fraction of the frame's size.
    """
    out = np.zeros(band.shape, bool)
    window = grown_box(band, 2 * radius + 2)
    if window is None:
        return out
    band_w = band[window]
    neck = seg.open_close(skin[window], radius) & band_w
    # the neck hangs from the head: keep skin blobs that touch the head's lower edge
    touching = cv2.dilate(head[window].view(np.uint8), seg.disk(radius + 2)).view(bool)
    out[window] = seg.fill_holes(seg.components_touching(neck, touching)) & band_w
    return out


def grown_box(mask: np.ndarray, margin: int) -> tuple[slice, slice] | None:
    """The bounding box of a bool mask [H, W] grown by `margin` px (within the frame), as slices; None if empty."""
    x, y, w, h = cv2.boundingRect(mask.view(np.uint8))
    if w == 0 or h == 0:
        return None
    rows, cols = mask.shape
    return slice(max(y - margin, 0), min(y + h + margin, rows)), slice(max(x - margin, 0), min(x + w + margin, cols))


# ---------------------------------------------------------------- per-process worker

_MODELS: dict[str, Any] = {}


def _models() -> tuple[seg.PersonSegmenter, seg.ShoulderDetector]:
    # one set of mediapipe graphs per process, reused over every chunk it is given
    if not _MODELS:
        _MODELS["person"] = seg.PersonSegmenter()
        _MODELS["pose"] = seg.ShoulderDetector()
    return _MODELS["person"], _MODELS["pose"]


@dataclass(frozen=True)
class _Chunk:
    frames: range
    ori_dir: Path
    out_dir: Path
    mesh: np.ndarray  # [len(frames), 478, 3]
    params: ParsingParams
    pose_every: int
    mask_cache: Path  # where the selfie masks are left for the matting step


def _parse_chunk(job: _Chunk) -> dict[str, float]:
    person_model, pose_model = _models()
    shoulders, seen, head_area = None, 0, 0.0
    masks = []  # uint8, as the cache stores them: a chunk of float masks is 26 MB
    for k, i in enumerate(job.frames):
        rgb = seg.read_rgb(job.ori_dir / f"{i}.jpg")
        if k % job.pose_every == 0:  # shoulders move slowly; pose is the costliest model here
            shoulders = pose_model(rgb)
        seen += shoulders is not None
        prob = person_model(rgb)
        masks.append(seg.mask_to_u8(prob))
        labels = parse_frame(rgb, prob, job.mesh[k], shoulders, job.params)
        head_area += float(np.mean(labels == HEAD))
        write_parsing(job.out_dir / f"{i}.png", labels)
    seg.MaskCache(job.mask_cache).write(job.frames, np.stack(masks))
    return {"frames": len(job.frames), "shoulders_seen": seen, "head_area": head_area}


class ParsingStep(PreprocessStep):
    """parsing/<i>.png: head / neck / torso / background per crop frame (ER-NeRF colour code)."""

    name = "parsing"
    requires = ("headbox", "landmarks")

    def __init__(self, backend: str = "mediapipe", bisenet_weights: str | None = None, workers: int = 2,
                 chunk_size: int = 25, pose_every: int = 5, params: ParsingParams | dict | None = None) -> None:
        if backend not in BACKENDS:
            raise ErnerfError(f"preprocess.steps.parsing.backend={backend!r} is not one of {list(BACKENDS)}.")
        if backend == "bisenet":
            from ernerf.preprocess.bisenet import check_weights_path

            check_weights_path(bisenet_weights)  # fail when the pipeline is built, not after earlier steps ran
        self.backend, self.bisenet_weights = backend, bisenet_weights
        self.workers, self.chunk_size, self.pose_every = workers, chunk_size, max(1, pose_every)
        self.params = params if isinstance(params, ParsingParams) else ParsingParams(**dict(params or {}))

    def outputs(self, layout: SubjectLayout) -> list[Path]:
        return [layout.parsing_dir]

    def run(self, ctx: StepContext) -> dict[str, Any]:
        layout, n = ctx.layout, ctx.num_frames
        cache = seg.person_mask_cache(layout.root)
        cache.clear()  # masks of earlier crops must never reach the matting step
        with atomic_dir(layout.parsing_dir) as out_dir:
            if self.backend == "bisenet":
                return self._run_bisenet(layout, n, out_dir)
            mesh = load_mesh(layout, n)
            cache.folder.mkdir(parents=True, exist_ok=True)
            jobs = [_Chunk(r, layout.ori_imgs, out_dir, mesh[r.start:r.stop], self.params, self.pose_every,
                           cache.folder) for r in seg.frame_chunks(n, self.chunk_size)]
            stats = []
            with ctx.bar(n) as bar:
                for job, chunk_stats in zip(jobs, seg.map_ordered(_parse_chunk, jobs, self.workers)):
                    stats.append(chunk_stats)
                    bar.update(len(job.frames))
        seen = sum(s["shoulders_seen"] for s in stats)
        if seen == 0:
            ctx.warn("parsing: no shoulders found in any frame; the neck ends at a face-relative length.")
        return {"shoulders_seen": seen / n, "head_area": sum(s["head_area"] for s in stats) / n}

    def _run_bisenet(self, layout: SubjectLayout, n: int, out_dir: Path) -> dict[str, Any]:
        from ernerf.preprocess.bisenet import BiSeNetParser

        parser = BiSeNetParser(self.bisenet_weights, threads=self.workers)  # torch threads use both cores
        head_area = 0.0
        for frames in seg.frame_chunks(n, 4):
            batch = np.stack([seg.read_rgb(layout.ori_img(i)) for i in frames])
            for i, labels in zip(frames, parser(batch)):
                head_area += float(np.mean(labels == HEAD))
                write_parsing(out_dir / f"{i}.png", labels)
        return {"backend": "bisenet", "head_area": head_area / n}


def load_mesh(layout: SubjectLayout, n: int) -> np.ndarray:
    """The landmarks step's mesh [N, 478, 3], checked against the frame count."""
    if not layout.mesh.exists():
        raise ErnerfError(f"{layout.mesh} is missing: {redo_hint(layout.mesh)}.")
    mesh = np.load(layout.mesh)
    if mesh.ndim != 3 or mesh.shape[0] != n or mesh.shape[1] < max(seg.FACE_OVAL) + 1:
        raise ErnerfError(f"{layout.mesh} has shape {mesh.shape}, expected [{n}, 478, 3]: {redo_hint(layout.mesh)}.")
    return mesh
