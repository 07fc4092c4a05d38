"""Step 3: mediapipe face mesh (478 points) on every crop, and 68 iBUG landmarks derived from it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ernerf.errors import ErnerfError
from ernerf.io.atomic import atomic_path
from ernerf.io.layout import SubjectLayout
from ernerf.preprocess.base import PreprocessStep, StepContext
from ernerf.preprocess.mediapipe_face import NUM_MESH_POINTS

# Mesh vertex for each of the 68 iBUG points. "Left" is the image left (the subject's right side).
# Chosen on mediapipe's canonical topology and checked by drawing them on real crops.
IBUG68_FROM_MESH = np.array([
    # 0-16 jaw, image left at eye level -> chin (8) -> image right; mirror pairs along the face oval,
    # picked so they sit about evenly by arc length as iBUG's do (measured on three real clips)
    127, 234, 93, 132, 58, 136, 150, 176, 152, 400, 379, 365, 288, 361, 323, 454, 356,
    # 17-21 left brow outer -> inner, 22-26 right brow inner -> outer (upper brow edge)
    70, 63, 105, 66, 107, 336, 296, 334, 293, 300,
    # 27-30 nose bridge top -> tip, 31-35 nostril base left -> right (33 = below the tip)
    168, 197, 5, 4, 98, 97, 2, 326, 327,
    # 36-41 left eye: outer corner, upper outer, upper inner, inner corner, lower inner, lower outer
    33, 160, 158, 133, 153, 144,
    # 42-47 right eye: inner corner, upper inner, upper outer, outer corner, lower outer, lower inner
    362, 385, 387, 263, 373, 380,
    # 48-59 outer lips: left corner, upper lip -> right corner (54), lower lip back to the left
    61, 40, 37, 0, 267, 270, 291, 321, 314, 17, 84, 91,
    # 60-67 inner lips: left corner, upper -> right corner (64), lower back
    78, 81, 13, 311, 308, 402, 14, 178,
])
MIN_VALID_RATIO = 0.5  # below this share of detected frames the interpolated mesh is mostly guesswork
MISS_WARN_RATIO = 0.95  # below this share of detected frames, interpolation is worth a warning
MIN_PARALLEL_FRAMES = 500  # a worker needs ~2 s to import mediapipe: worth it only for longer clips
BATCH = 40  # consecutive frames per work item: tracking runs within a batch, detection once per batch


class LandmarksStep(PreprocessStep):
    """Run face mesh on the 512 crops: mesh.npy, mesh_valid.npy and ori_imgs/<i>.lms (68 points)."""

    name = "landmarks"

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
            raise ErnerfError(f"{len(missing)} crop frames are missing (first {missing[0]}): rerun the headbox "
                              "step (preprocess.force=[headbox]).")
        mesh, valid = mesh_frames(frames, self.workers, self.min_confidence)
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
                min_parallel: int = MIN_PARALLEL_FRAMES) -> tuple[np.ndarray, np.ndarray]:
    """Face mesh of each image file: (float32 [N, 478, 3] zeros where missed, bool [N])."""
    mesh = np.zeros((len(frames), NUM_MESH_POINTS, 3), dtype=np.float32)
    valid = np.zeros(len(frames), dtype=bool)
    if workers <= 1 or len(frames) < min_parallel:
        results = _mesh_batches(frames, min_confidence, _LocalCounter())
    else:
        results = _mesh_parallel(frames, workers, min_confidence)
    for start, m, v in results:
        mesh[start:start + len(m)], valid[start:start + len(v)] = m, v
    return mesh, valid


def _mesh_parallel(frames: list[Path], workers: int, min_confidence: float) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Main process and `workers - 1` spawned ones pull batches from one shared counter.

    The main process starts at once while the others import mediapipe, and whoever is faster takes
    more batches, so the split stays balanced on a busy machine.
    """
    import multiprocessing as mp

    # spawn: each worker builds its own mediapipe graph; forking a process that holds one is unsafe.
    ctx = mp.get_context("spawn")
    counter = ctx.Value("i", 0)
    with ctx.Pool(workers - 1, initializer=_set_worker_counter, initargs=(counter,)) as pool:
        pending = [pool.apply_async(_mesh_batches, (frames, min_confidence)) for _ in range(workers - 1)]
        results = _mesh_batches(frames, min_confidence, counter)
        for job in pending:
            results += job.get()
    return results


class _LocalCounter:
    """Single-process stand-in for the shared batch counter."""

    def __init__(self) -> None:
        self.value = 0

    def get_lock(self) -> Any:
        import contextlib

        return contextlib.nullcontext()


_WORKER_COUNTER: Any = None


def _set_worker_counter(counter: Any) -> None:
    global _WORKER_COUNTER
    _WORKER_COUNTER = counter


def _mesh_batches(frames: list[Path], min_confidence: float,
                  counter: Any = None) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Take BATCH consecutive frames at a time until none are left; track the mesh within each batch."""
    import cv2

    from ernerf.preprocess.mediapipe_face import FaceMesher

    counter = counter if counter is not None else _WORKER_COUNTER
    out = []
    with FaceMesher(static=False, min_confidence=min_confidence) as mesher:
        while True:
            with counter.get_lock():
                start = counter.value
                counter.value = start + BATCH
            if start >= len(frames):
                return out
            paths = frames[start:start + BATCH]
            mesh = np.zeros((len(paths), NUM_MESH_POINTS, 3), dtype=np.float32)
            valid = np.zeros(len(paths), dtype=bool)
            mesher.reset()  # frames of the next batch are not adjacent to the last one
            for k, path in enumerate(paths):
                bgr = cv2.imread(str(path))
                pts = mesher.mesh(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)) if bgr is not None else None
                if pts is not None:
                    mesh[k], valid[k] = pts, True
            out.append((start, mesh, valid))
