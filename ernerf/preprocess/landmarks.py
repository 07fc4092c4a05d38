"""Step 3: mediapipe face mesh (478 points) on every crop, and 68 iBUG landmarks derived from it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ernerf.errors import ErnerfError
from ernerf.face_topology import IBUG68_FROM_MESH
from ernerf.io.atomic import atomic_path
from ernerf.io.layout import SubjectLayout
from ernerf.preprocess.base import PreprocessStep, StepContext
from ernerf.preprocess.check import redo_hint
from ernerf.preprocess.mediapipe_face import NUM_MESH_POINTS

MIN_VALID_RATIO = 0.5  # below this share of detected frames the interpolated mesh is mostly guesswork
MISS_WARN_RATIO = 0.95  # below this share of detected frames, interpolation is worth a warning
MIN_PARALLEL_FRAMES = 80  # below two batches one process is as fast (workers are started ahead, see warm_pool)
BATCH = 40  # consecutive frames per work item: tracking runs within a batch, detection once per batch


class LandmarksStep(PreprocessStep):
    """Run face mesh on the 512 crops: mesh.npy, mesh_valid.npy and ori_imgs/<i>.lms (68 points)."""

    name = "landmarks"
    requires = ("headbox",)

    def __init__(self, workers: int = 2, min_confidence: float = 0.5) -> None:
        self.workers = workers
        self.min_confidence = min_confidence

    def outputs(self, layout: SubjectLayout) -> list[Path]:
        return [layout.mesh, layout.mesh_valid, layout.lms(0)]

    def run(self, ctx: StepContext) -> dict[str, Any]:
        n = ctx.num_frames
        frames = [ctx.layout.ori_img(i) for i in range(n)]
        missing = [str(p) for p in frames if not p.exists()]
        if missing:
            raise ErnerfError(f"{len(missing)} crop frames are missing (first {missing[0]}): {redo_hint(missing[0])}.")
        with ctx.bar(n) as bar:
            mesh, valid = mesh_frames(frames, self.workers, self.min_confidence, progress=bar.update)
        ratio = float(valid.mean())
        if ratio < MIN_VALID_RATIO:
            raise ErnerfError(f"the face mesh was found in only {ratio:.0%} of the crops of {ctx.layout.root}: "
                              "the face must be visible, frontal and well lit in most frames; check ori_imgs/.")
        if ratio < MISS_WARN_RATIO:
            ctx.warn(f"the face mesh was missed in {1 - ratio:.0%} of the frames; those were interpolated.")
        mesh = interpolate_missing(mesh, valid)
        self._save(ctx.layout, mesh, valid)
        return {"valid_ratio": round(ratio, 3)}

    def _save(self, layout: SubjectLayout, mesh: np.ndarray, valid: np.ndarray) -> None:
        for i, pts in enumerate(mesh_to_ibug68(mesh)):
            with atomic_path(layout.lms(i)) as tmp:
                np.savetxt(tmp, pts, fmt="%.3f")
        with atomic_path(layout.mesh_valid) as tmp:
            np.save(tmp, valid)
        with atomic_path(layout.mesh) as tmp:  # last: its presence marks the step's outputs complete
            np.save(tmp, mesh.astype(np.float32))


def mesh_to_ibug68(mesh: np.ndarray) -> np.ndarray:
    """68 iBUG-order 2D landmarks from face meshes. # [..., 478, 3] -> [..., 68, 2]"""
    return mesh[..., IBUG68_FROM_MESH, :2]


def interpolate_missing(mesh: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Fill frames without a mesh by linear interpolation in time (nearest at the ends). # [N,P,3]"""
    if valid.all():
        return mesh
    t = np.flatnonzero(valid)
    flat = mesh.reshape(len(mesh), -1)
    filled = np.stack([np.interp(np.arange(len(mesh)), t, flat[t, k]) for k in range(flat.shape[1])], axis=1)
    return filled.reshape(mesh.shape).astype(np.float32)


def mesh_frames(frames: list[Path], workers: int = 2, min_confidence: float = 0.5,
                min_parallel: int = MIN_PARALLEL_FRAMES,
                progress: Callable[[int], object] = lambda n: None) -> tuple[np.ndarray, np.ndarray]:
    """Face mesh of each image file: (float32 [N, 478, 3] zeros where missed, bool [N]).

    Batches of BATCH consecutive frames go to the shared worker pool (the one parsing, composite
    and matting use, so its start-up is paid once per run); each batch is tracked on its own, so
    the result does not depend on how many processes share the work.
    """
    from ernerf.preprocess import segmentation as seg

    mesh = np.zeros((len(frames), NUM_MESH_POINTS, 3), dtype=np.float32)
    valid = np.zeros(len(frames), dtype=bool)
    jobs = [_Batch(start, tuple(frames[start:start + BATCH]), min_confidence)
            for start in range(0, len(frames), BATCH)]
    for job, (m, v) in zip(jobs, seg.map_ordered(_mesh_batch, jobs, workers if len(frames) >= min_parallel else 1)):
        mesh[job.start:job.start + len(m)], valid[job.start:job.start + len(v)] = m, v
        progress(len(job.paths))
    return mesh, valid


@dataclass(frozen=True)
class _Batch:
    start: int
    paths: tuple[Path, ...]
    min_confidence: float


_MESHERS: dict[float, Any] = {}


def _mesh_batch(job: _Batch) -> tuple[np.ndarray, np.ndarray]:
    """Mesh a run of consecutive frames, tracking from one to the next: ([k, 478, 3], bool [k])."""
    import cv2

    from ernerf.preprocess.mediapipe_face import FaceMesher

    mesher = _MESHERS.get(job.min_confidence)
    if mesher is None:  # one graph per process, reused over its batches
        mesher = _MESHERS[job.min_confidence] = FaceMesher(static=False, min_confidence=job.min_confidence)
    mesher.reset()  # this batch's frames are not adjacent to the last one this process saw
    mesh = np.zeros((len(job.paths), NUM_MESH_POINTS, 3), dtype=np.float32)
    valid = np.zeros(len(job.paths), dtype=bool)
    for k, path in enumerate(job.paths):
        bgr = cv2.imread(str(path))
        pts = mesher.mesh(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)) if bgr is not None else None
        if pts is not None:
            mesh[k], valid[k] = pts, True
    return mesh, valid
