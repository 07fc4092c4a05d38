"""Step 2: one fixed square head box for the whole clip, and the 512x512 crop video and frames."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ernerf.errors import ErnerfError
from ernerf.io.atomic import atomic_dir, write_text
from ernerf.io.layout import SubjectLayout
from ernerf.io.video import VideoWriter, iter_frames
from ernerf.preprocess.base import PreprocessStep, StepContext
from ernerf.preprocess.check import redo_hint
from ernerf.preprocess.mediapipe_face import FaceBox, FaceDetector
from ernerf.progress import Enabled, progress_bar

SAME_FACE_DISTANCE = 0.6  # detections whose centres are closer than this many face sizes are one person
DETECT_SIDE = 640  # frames are shrunk to this before detection: ample for a 192 px detector input
DETECT_BATCH = 8  # shrunk frames per work item of the pool: ~10 MB of pixels at most, a few ms of detection each
MULTI_FACE_WARN_RATIO = 0.1
PAD_WARN_FRACTION = 0.25  # above this share of invented (edge-repeated) pixels in the crop, tell the user  # warn about other people when they are visible in this share of frames


@dataclass(frozen=True)
class Track:
    """The detections of one person: sampled frame index -> box."""

    boxes: dict[int, FaceBox]

    @property
    def center(self) -> np.ndarray:  # [2] median centre
        return np.median([b.center for b in self.boxes.values()], axis=0)

    @property
    def size(self) -> float:  # median face size in pixels
        return float(np.median([b.size for b in self.boxes.values()]))


class HeadboxStep(PreprocessStep):
    """Detect the face over the clip, fix one square box around head, hair, neck and shoulder tops, crop."""

    name = "headbox"
    requires = ("ingest",)

    def __init__(self, crop_size: int = 512, scale: float = 2.2, min_scale: float = 1.2, shift_down: float = 0.15, stride: int = 5,
                 max_samples: int = 600, min_box_size: int = 256, min_face_ratio: float = 0.5,
                 min_confidence: float = 0.5, jpeg_quality: int = 95, preset: str = "superfast",
                 workers: int = 2) -> None:
        self.crop_size = crop_size
        self.scale = scale  # box side / face size: room for hair, ears, neck and shoulder tops
        self.min_scale = min_scale  # the tightest box accepted before padding past the frame
        self.shift_down = shift_down  # box centre below the face centre, in face sizes (neck and shoulders)
        self.stride = stride
        self.max_samples = max_samples  # caps detection work on long videos
        self.min_box_size = min_box_size
        self.min_face_ratio = min_face_ratio
        self.min_confidence = min_confidence
        self.jpeg_quality = jpeg_quality
        self.preset = preset  # x264 of face_data.mp4: no step or stage decodes it, so speed beats file size
        self.workers = workers  # processes detecting faces (the shared pool)

    def outputs(self, layout: SubjectLayout) -> list[Path]:
        return [layout.head_bbox, layout.face_video, layout.ori_imgs]

    def run(self, ctx: StepContext) -> dict[str, Any]:
        meta = ctx.meta()
        n, width, height = int(meta["num_frames"]), int(meta["width"]), int(meta["height"])
        stride = max(self.stride, -(-n // self.max_samples))
        detections = detect_faces(ctx.layout.video, stride, self.min_confidence, self.workers)
        track = self._main_track(ctx, detections)
        self._check_resolution(track, width, height)
        box = self._box(track, width, height)
        side = box[2] - box[0]
        if side < self.crop_size:
            ctx.warn(f"the head box is {side} px, upscaled to {self.crop_size} px: the avatar will look soft. "
                     "Film closer or at a higher resolution for sharper results.")
        self._write_crops(ctx.layout, box, fps=float(meta["fps"]), expected=n, progress=ctx.progress)
        x1, y1, x2, y2 = box
        bbox = {"x1": x1, "y1": y1, "x2": x2, "y2": y2, "face_size": round(track.size, 1)}
        write_text(ctx.layout.head_bbox, json.dumps(bbox, indent=2))
        outside = 1.0 - _inside_fraction(box, width, height)
        if outside > PAD_WARN_FRACTION:
            ctx.warn(f"{outside:.0%} of the head box lies outside the frame and is filled by repeating the edge "
                     "pixels: film with more room around the head and shoulders for a cleaner background.")
        padded = outside > 0
        return {"box": [x1, y1, x2, y2], "side": side, "padded": padded,
                "face_ratio": round(len(track.boxes) / len(detections), 2)}

    def _main_track(self, ctx: StepContext, detections: list[list[FaceBox]]) -> Track:
        """The person to keep: among tracks seen in most frames, the largest face; warn about others."""
        tracks = group_tracks(detections)
        sampled = len(detections)
        if not tracks:
            raise ErnerfError(f"no face was found in {ctx.layout.video}: the subject must face the camera, "
                              "well lit, for the whole clip.")
        longest = max(len(t.boxes) for t in tracks)
        track = max((t for t in tracks if len(t.boxes) >= 0.5 * longest), key=lambda t: t.size)
        ratio = len(track.boxes) / sampled
        if ratio < self.min_face_ratio:
            raise ErnerfError(
                f"a face was found in only {ratio:.0%} of the frames of {ctx.layout.video} (at least "
                f"{self.min_face_ratio:.0%} needed): use a clip where the subject faces the camera throughout, "
                "or lower preprocess.steps.headbox.min_face_ratio."
            )
        multi = sum(1 for faces in detections if len(faces) > 1) / sampled
        if multi > MULTI_FACE_WARN_RATIO:
            cx, cy = track.center
            ctx.warn(f"{multi:.0%} of the frames show more than one face: keeping the largest steady one "
                     f"(around x={cx:.0f}, y={cy:.0f}). Other people in the crop disturb training: trim them out.")
        return track

    def _check_resolution(self, track: Track, width: int, height: int) -> None:
        """The head (one frame's box, without the motion margin) must have enough pixels for the crop."""
        head = round(self.scale * track.size)
        if head < self.min_box_size:
            raise ErnerfError(
                f"the face is too small: the head box measures {head} px (face about {track.size:.0f} px in a "
                f"{width}x{height} frame) but at least {self.min_box_size} px are needed for a "
                f"{self.crop_size}x{self.crop_size} crop. Film closer so the face fills about a third of the frame "
                "height, or use a higher resolution (or lower preprocess.steps.headbox.min_box_size)."
            )

    def _box(self, track: Track, width: int, height: int) -> tuple[int, int, int, int]:
        """One square box holding every frame's head box (robust to outliers), even side, pixel ints."""
        per_frame = np.array([_head_box(b, self.scale, self.shift_down) for b in track.boxes.values()])
        lo = np.percentile(per_frame[:, :2], 5, axis=0)  # [2] x1, y1
        hi = np.percentile(per_frame[:, 2:], 95, axis=0)  # [2] x2, y2
        side = int(np.ceil(max(hi - lo) / 2.0)) * 2
        # A frame already framed tightly (e.g. a 512x512 talking-head clip) holds less than `scale` face sizes:
        # keep the frame's own pixels (cap the box at its short side) rather than inventing padding, as long as
        # the head core (`min_scale` face sizes plus the motion range) still fits.
        core = int(np.ceil((max(hi - lo) - (self.scale - self.min_scale) * track.size) / 2.0)) * 2
        short = min(width, height) // 2 * 2
        if core <= short < side:
            side = short
        center = (lo + hi) / 2
        x1, y1 = (_fit_axis(center[k], side, size) for k, size in ((0, width), (1, height)))
        return x1, y1, x1 + side, y1 + side

    def _write_crops(self, layout: SubjectLayout, box: tuple[int, int, int, int], fps: float, expected: int,
                     progress: Enabled = "auto") -> None:
        """Crop every frame to the box, write face_data.mp4 and ori_imgs/<i>.jpg (all or nothing)."""
        import cv2

        params = [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality]
        count = 0
        with atomic_dir(layout.ori_imgs) as tmp_dir, \
                VideoWriter(layout.face_video, fps=fps, preset=self.preset) as writer, \
                ThreadPoolExecutor(2) as pool, progress_bar(expected, "headbox", enabled=progress) as bar:
            pending = []
            for i, crop in enumerate(crop_frames(layout.video, box, self.crop_size)):
                writer.write(crop)
                bgr = cv2.cvtColor(crop, cv2.COLOR_RGB2BGR)
                pending.append(pool.submit(cv2.imwrite, str(tmp_dir / f"{i}.jpg"), bgr, params))
                if len(pending) > 16:  # bound memory: never queue more than a few frames
                    _check_written(pending.pop(0))
                count = i + 1
                bar.update(1)
            for fut in pending:
                _check_written(fut)
            if count != expected:  # raised inside the block, so neither output replaces a good one
                raise ErnerfError(f"{layout.video} gave {count} frames but meta.json says {expected}: "
                                  f"{redo_hint(layout.video)}.")


def detect_faces(video: Path, stride: int, min_confidence: float = 0.5, workers: int = 1) -> list[list[FaceBox]]:
    """Faces in every `stride`-th frame of `video` (full-range model, so small faces are seen too).

    This process decodes and shrinks the frames; batches of them go to the shared worker pool for detection (its
    workers have mediapipe loaded already, and decoding here overlaps the detection there). The detector keeps
    nothing from one image to the next, so where a frame is detected does not change its faces."""
    from ernerf.preprocess.segmentation import map_ordered

    batches = _shrunk_batches(iter_frames(video, step=stride), min_confidence)
    return [faces for batch in map_ordered(_detect_batch, batches, workers) for faces in batch]


@dataclass(frozen=True)
class _DetectBatch:
    frames: tuple[np.ndarray, ...]  # RGB, at most DETECT_SIDE px on the long side
    scales: tuple[float, ...]  # shrunk size / frame size: boxes are divided by it
    min_confidence: float


def _shrunk_batches(frames: Iterator[np.ndarray], min_confidence: float) -> Iterator[_DetectBatch]:
    """Frames shrunk for the detector (the model sees 192 px anyway), DETECT_BATCH to a batch."""
    batch: list[tuple[np.ndarray, float]] = []
    for frame in frames:
        batch.append(_shrink(frame))
        if len(batch) == DETECT_BATCH:
            yield _DetectBatch(tuple(f for f, _ in batch), tuple(s for _, s in batch), min_confidence)
            batch = []
    if batch:
        yield _DetectBatch(tuple(f for f, _ in batch), tuple(s for _, s in batch), min_confidence)


def _shrink(frame: np.ndarray, max_side: int = DETECT_SIDE) -> tuple[np.ndarray, float]:
    """The frame at most `max_side` px on its long side, and the scale applied (1 when left as is)."""
    import cv2

    s = max_side / max(frame.shape[:2])
    if s >= 1:
        return frame, 1.0
    return cv2.resize(frame, None, fx=s, fy=s, interpolation=cv2.INTER_LINEAR), s


_DETECTORS: dict[float, FaceDetector] = {}


def _detect_batch(batch: _DetectBatch) -> list[list[FaceBox]]:
    """Faces of each shrunk frame, boxes in the full frame's pixels (runs in a pool worker)."""
    det = _DETECTORS.get(batch.min_confidence)
    if det is None:  # one graph per process, reused over its batches
        det = _DETECTORS[batch.min_confidence] = FaceDetector(model_selection=1, min_confidence=batch.min_confidence)
    return [[FaceBox(b.x1 / s, b.y1 / s, b.x2 / s, b.y2 / s, b.score) if s != 1 else b for b in det.detect(frame)]
            for frame, s in zip(batch.frames, batch.scales)]


def group_tracks(detections: list[list[FaceBox]]) -> list[Track]:
    """Link detections of the same person over frames by position (faces in a talking clip barely move)."""
    tracks: list[dict[int, FaceBox]] = []
    anchors: list[tuple[np.ndarray, float]] = []  # first (largest) box of each track: centre, size
    ordered = sorted(((b, i) for i, faces in enumerate(detections) for b in faces), key=lambda bi: -bi[0].size)
    for box, i in ordered:
        c = np.array(box.center)
        for boxes, (ac, asize) in zip(tracks, anchors):
            if i not in boxes and np.linalg.norm(c - ac) < SAME_FACE_DISTANCE * asize:
                boxes[i] = box
                break
        else:
            tracks.append({i: box})
            anchors.append((c, box.size))
    return [Track(t) for t in tracks]


def crop_frames(video: Path, box: tuple[int, int, int, int], size: int) -> Iterator[np.ndarray]:
    """Stream `size`x`size` RGB crops of `box`; parts outside the frame repeat the edge pixels."""
    for frame in iter_frames(video):
        yield crop_square(frame, box, size)


def crop_square(frame: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """Crop [y1:y2, x1:x2] with edge replication beyond the frame, resized to size x size. # [H,W,3] -> [s,s,3]"""
    import cv2

    h, w = frame.shape[:2]
    x1, y1, x2, y2 = box
    scale = size / (x2 - x1)
    inside = frame[max(y1, 0):min(y2, h), max(x1, 0):min(x2, w)]
    # where the frame's pixels land in the output; the rest is padding, added after scaling (cheaper)
    ox1, oy1 = round((max(x1, 0) - x1) * scale), round((max(y1, 0) - y1) * scale)
    ox2, oy2 = round((min(x2, w) - x1) * scale), round((min(y2, h) - y1) * scale)
    out = _resize(inside, ox2 - ox1, oy2 - oy1)
    if (ox1, oy1, ox2, oy2) != (0, 0, size, size):
        out = cv2.copyMakeBorder(out, oy1, size - oy2, ox1, size - ox2, borderType=cv2.BORDER_REPLICATE)
    return np.ascontiguousarray(out)


def _resize(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize without aliasing: halve with a Gaussian pyramid while >2x too big, then bilinear or area."""
    import cv2

    while img.shape[1] >= 2 * width and img.shape[0] >= 2 * height:
        img = cv2.pyrDown(img)
    if img.shape[1] == width and img.shape[0] == height:
        return img
    # INTER_AREA only where bilinear would alias (it costs several times more)
    interp = cv2.INTER_AREA if img.shape[1] > 1.5 * width else cv2.INTER_LINEAR if img.shape[1] > width \
        else cv2.INTER_CUBIC
    return cv2.resize(img, (width, height), interpolation=interp)


def _head_box(face: FaceBox, scale: float, shift_down: float) -> tuple[float, float, float, float]:
    """Square head box of one detection: `scale` face sizes wide, centred `shift_down` face sizes lower."""
    cx, cy = face.center
    cy += shift_down * face.size
    half = scale * face.size / 2
    return cx - half, cy - half, cx + half, cy + half


def _inside_fraction(box: tuple[int, int, int, int], width: int, height: int) -> float:
    """Share of the box's area that real frame pixels cover."""
    x1, y1, x2, y2 = box
    inside = max(min(x2, width) - max(x1, 0), 0) * max(min(y2, height) - max(y1, 0), 0)
    return inside / ((x2 - x1) * (y2 - y1))


def _fit_axis(center: float, side: int, frame: int) -> int:
    """Start of a `side` span around `center`, slid inside [0, frame) when it fits (padding only when it can't)."""
    start = int(round(center - side / 2))
    if side <= frame:
        return min(max(start, 0), frame - side)
    return start


def _check_written(fut: Any) -> None:
    if not fut.result():
        raise ErnerfError("writing a crop frame failed: check free disk space in the dataset folder.")
