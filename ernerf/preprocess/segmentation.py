"""Person segmentation and shoulder detection (mediapipe's embedded models), mask helpers, and a
streaming process pool for per-frame work."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import multiprocessing
import os
import re
import shutil
import signal
import sys
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sized
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from itertools import islice
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np

from ernerf.preprocess.mediapipe_face import native_stderr_silenced

# mediapipe's C++ side logs through glog; keep its start-up chatter out of the user's console.
os.environ.setdefault("GLOG_minloglevel", "2")

T = TypeVar("T")
R = TypeVar("R")

# mediapipe face-mesh indices of the face oval, in contour order (clockwise in the image, starting at
# the top of the forehead; 152 is the chin, 234/454 the sides at cheekbone level).
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
             152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)
CHIN, FOREHEAD, CHEEK_RIGHT, CHEEK_LEFT = 152, 10, 454, 234  # image right / left
JAW_RIGHT, JAW_LEFT = 397, 172  # jaw angles
# mesh points on the cheeks and forehead: skin without eyes, brows, lips or nostrils
SKIN_POINTS = (50, 280, 101, 330, 36, 266, 205, 425, 187, 411, 151, 9, 108, 337, 117, 346)


class PersonSegmenter:
    """Soft person mask of an RGB frame from mediapipe's selfie-segmentation model."""

    def __init__(self, model_selection: int = 0) -> None:
        import mediapipe as mp

        self._model = mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=model_selection)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """[H, W, 3] uint8 RGB -> [H, W] float32 person probability in [0, 1]."""
        mask = self._model.process(rgb).segmentation_mask
        if mask is None:
            return np.zeros(rgb.shape[:2], np.float32)
        return clip(mask.astype(np.float32, copy=False), 0.0, 1.0)


class ShoulderDetector:
    """Shoulder points from mediapipe pose (tracking mode: call on frames in time order)."""

    def __init__(self, min_visibility: float = 0.5) -> None:
        import mediapipe as mp

        self._model = mp.solutions.pose.Pose(static_image_mode=False, model_complexity=1)
        self.min_visibility = min_visibility

    def __call__(self, rgb: np.ndarray) -> np.ndarray | None:
        """[H, W, 3] RGB -> [2, 2] pixel xy of the (image-left, image-right) shoulders, or None if not seen."""
        res = self._model.process(rgb)
        if res.pose_landmarks is None:
            return None
        h, w = rgb.shape[:2]
        lm = res.pose_landmarks.landmark
        pts = [lm[12], lm[11]]  # the subject's right shoulder appears on the image left
        if min(p.visibility for p in pts) < self.min_visibility:
            return None
        return np.array([[p.x * w, p.y * h] for p in pts], np.float32)


def components_touching(mask: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """Keep the components of `mask` that overlap `seed` (both boolean [H, W])."""
    n, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    keep = np.zeros(n, bool)
    keep[labels[seed & mask.astype(bool)]] = True
    keep[0] = False
    return _select_labels(labels, keep)


def _select_labels(labels: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """keep[labels] as a boolean image; a few kept labels are compared directly (several times faster)."""
    kept = np.flatnonzero(keep)
    if len(kept) > 3:
        return keep[labels]
    out = np.zeros(labels.shape, bool)
    for k in kept:
        out |= labels == k
    return out


def drop_small_components(mask: np.ndarray, min_area: int) -> np.ndarray:
    """Remove 8-connected components smaller than `min_area` pixels."""
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_area
    keep[0] = False
    return _select_labels(labels, keep)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill background regions enclosed by the mask (not connected to the image border)."""
    inv = (~mask.astype(bool)).astype(np.uint8)
    n, labels = cv2.connectedComponents(inv, connectivity=4)
    hole = np.ones(n, bool)
    hole[0] = False
    for edge in (labels[0], labels[-1], labels[:, 0], labels[:, -1]):
        hole[edge] = False
    return hole[labels] | mask.astype(bool)


def disk(radius: int) -> np.ndarray:
    """Elliptic structuring element of the given radius."""
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def open_close(mask: np.ndarray, radius: int) -> np.ndarray:
    """Morphological opening then closing: drops specks and closes cracks up to `radius` pixels."""
    if radius <= 0:
        return mask.astype(bool)
    m = mask.astype(np.uint8)
    m = cv2.morphologyEx(m, cv2.MORPH_OPEN, disk(radius))
    m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, disk(radius))
    return m.astype(bool)


def read_rgb(path: os.PathLike | str) -> np.ndarray:
    """Read an image file as RGB uint8 [H, W, 3]."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        from ernerf.errors import ErnerfError
        from ernerf.preprocess.check import redo_hint

        raise ErnerfError(f"cannot read image {path}: {redo_hint(path)}.")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class MaskCache:
    """Soft person masks kept between steps as zlib-compressed uint8 chunks, one file per frame range.

    Parsing runs the selfie-segmentation model once per frame and leaves its masks here; matting
    reads them instead of running the model again. A mostly flat mask compresses ~20x, so even a
    long clip stays small. Files are written whole under a temporary name and renamed, so a reader
    only ever sees complete chunks; a frame range not covered reads as None (compute it then).
    """

    _NAME = re.compile(r"(\d+)-(\d+)\.u8z")

    def __init__(self, folder: Path | str) -> None:
        self.folder = Path(folder)

    def write(self, frames: range, masks: np.ndarray) -> None:
        """Store float masks [k, H, W] in [0, 1] (or uint8 0-255) of the consecutive `frames`."""
        if len(masks) != len(frames):
            raise ValueError(f"{len(masks)} masks for {len(frames)} frames")
        m8 = masks if masks.dtype == np.uint8 else mask_to_u8(masks)
        k, h, w = m8.shape
        path = self.folder / f"{frames.start}-{frames.stop}.u8z"
        tmp = path.with_name(f".tmp.{os.getpid()}.{path.name}")
        tmp.write_bytes(np.array([k, h, w], np.int64).tobytes() + zlib.compress(np.ascontiguousarray(m8), 1))
        os.replace(tmp, path)

    def read(self, frames: range) -> np.ndarray | None:
        """uint8 masks [len(frames), H, W] of `frames`, or None if some frame is not cached."""
        if not self.folder.is_dir() or len(frames) == 0:
            return None
        spans = sorted((int(m[1]), int(m[2]), f) for f in os.listdir(self.folder) if (m := self._NAME.fullmatch(f)))
        parts, at = [], frames.start
        for start, stop, name in spans:
            if start <= at < stop:
                parts.append(self._load(self.folder / name)[at - start:min(stop, frames.stop) - start])
                at = min(stop, frames.stop)
                if at >= frames.stop:
                    return np.concatenate(parts)
        return None

    @staticmethod
    def _load(path: Path) -> np.ndarray:
        raw = path.read_bytes()
        k, h, w = np.frombuffer(raw[:24], np.int64)
        return np.frombuffer(zlib.decompress(raw[24:]), np.uint8).reshape(int(k), int(h), int(w))

    def clear(self) -> None:
        """Remove every cached mask (they belong to crops that are about to change, or are used up)."""
        shutil.rmtree(self.folder, ignore_errors=True)
        with contextlib.suppress(OSError):  # and the hidden parent folder, once nothing else is in it
            self.folder.parent.rmdir()


def clip(x: np.ndarray, lo: float | np.ndarray, hi: float | np.ndarray) -> np.ndarray:
    """np.clip(x, lo, hi) for lo <= hi, same values and dtype: numpy 1.x's clip takes several times longer on a frame."""
    return np.minimum(np.maximum(x, lo), hi)


def mask_to_u8(mask: np.ndarray) -> np.ndarray:
    """Soft masks in [0, 1] (any shape) -> uint8 0-255, rounded: how the mask cache stores them."""
    return (clip(mask, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def person_mask_cache(root: Path | str) -> MaskCache:
    """The person-mask cache of the subject folder `root` (a hidden working folder, not a dataset file)."""
    return MaskCache(Path(root) / ".cache" / "person_masks")


def frame_chunks(num_frames: int, size: int) -> list[range]:
    """Split frame indices 0..num_frames-1 into consecutive ranges of at most `size`."""
    return [range(s, min(s + size, num_frames)) for s in range(0, num_frames, size)]


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _init_worker(parent: int) -> None:
    die_with_parent(parent)
    # each worker owns one core: stop OpenCV from spawning its own thread pool on top
    cv2.setNumThreads(1)
    # a worker's errors travel back with its task's result: all it would print is mediapipe's native
    # logging (see native_stderr_silenced), into the user's terminal
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)


def die_with_parent(parent: int) -> None:
    """End this process as soon as process `parent` dies, even by SIGKILL.

    A pool worker waits for its next task on a pipe that its siblings also hold open, so after its
    parent's death it would wait forever, models loaded. Linux kills it then (PR_SET_PDEATHSIG, sent when
    the thread that started it ends: the pools here are started from the main thread); elsewhere a
    thread watches the parent.
    """
    if not _parent_death_signal():
        threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True).start()
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)


def _parent_death_signal() -> bool:
    """Ask the Linux kernel to SIGKILL this process when its parent dies; False where that is not possible."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL) == 0
    except (OSError, AttributeError):
        return False


def _exit_when_orphaned(parent: int, every: float = 1.0) -> None:
    while os.getppid() == parent:
        time.sleep(every)
    os._exit(1)


def _warm_worker() -> int:
    # import the heavy modules while the parent is still busy with earlier steps
    import mediapipe  # noqa: F401

    return os.getpid()


_POOLS: dict[int, ProcessPoolExecutor] = {}


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of `workers` processes shared by every step of this run, started on first use.

    Starting workers costs seconds (a fresh interpreter importing mediapipe and OpenCV); sharing
    them keeps that a once-per-run cost, and their per-process model caches stay warm across steps.
    A worker that dies (killed for memory, a crash in native code) breaks the pool, which then
    fails every pending task instead of waiting forever for a result that will not come.
    """
    pool = _POOLS.get(workers)
    if pool is None:
        # spawn, not fork: OpenCV's and mediapipe's thread pools, once used by this process, can
        # deadlock a forked child. Scripts calling this need the usual `if __name__ == "__main__"` guard.
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker, initargs=(os.getpid(),))
        if not _POOLS:
            atexit.register(close_pools)
        _POOLS[workers] = pool
    return pool


def warm_pool(workers: int) -> None:
    """Start the shared pool's workers now (they load mediapipe in the background); no-op for one worker."""
    if workers > 1:
        pool = worker_pool(workers)
        for _ in range(workers):
            pool.submit(_warm_worker)


def close_pools() -> None:
    """Stop the shared worker pools (at exit, or to free their memory)."""
    for pool in _POOLS.values():
        pool.shutdown(wait=True, cancel_futures=True)
    _POOLS.clear()


def map_ordered(fn: Callable[[T], R], items: Iterable[T], workers: int, window: int | None = None) -> Iterator[R]:
    """Yield fn(item) in order, computed by `workers` processes with at most `window` in flight.

    `fn` must be a module-level function; it may keep per-process state (e.g. mediapipe graphs) in
    module globals. With workers <= 1 (or a single item) everything runs in this process. `items` may be
    an iterator: it is drawn as work is handed out, so making the items overlaps the work on earlier ones.
    """
    if workers <= 1 or (isinstance(items, Sized) and len(items) <= 1):
        for item in items:
            with native_stderr_silenced():  # as in a worker (see _init_worker)
                result = fn(item)
            yield result
        return
    pool = worker_pool(workers)
    it: Iterator[T] = iter(items)
    try:
        pending = deque(pool.submit(fn, x) for x in islice(it, window or 2 * workers))
        while pending:
            result = pending.popleft().result()
            for x in islice(it, 1):
                pending.append(pool.submit(fn, x))
            yield result
    except BrokenProcessPool as exc:
        _POOLS.pop(workers, None)
        pool.shutdown(wait=False, cancel_futures=True)
        from ernerf.errors import ErnerfError

        raise ErnerfError(
            f"a preprocessing worker process died while running {getattr(fn, '__name__', fn)} (killed for "
            "memory, or a crash in native code): rerun to resume from this step, with preprocess.workers=1 "
            "if it happens again.") from exc
