"""Thin wrappers over mediapipe's face detector and face mesh (legacy `mp.solutions`, embedded models).

Results come back in pixels of the image given, so callers never see mediapipe's normalised units.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

NUM_MESH_POINTS = 478  # 468 face mesh vertices + 10 iris points (refine_landmarks=True)


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Send what is written to file descriptor 2 meanwhile to /dev/null.

    mediapipe's C++ side logs every graph's start-up there (TFLite delegate, absl warnings, from the
    graph's own threads) and no setting turns that off; in a terminal it buries a failed run's one-line
    error. Wrap whole uses of a graph: the logging comes and goes with its start and its reset.
    """
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@dataclass(frozen=True)
class FaceBox:
    """One detected face: corners in pixels and the detector's confidence."""

    x1: float
    y1: float
    x2: float
    y2: float
    score: float

    @property
    def center(self) -> tuple[float, float]:
        return (self.x1 + self.x2) / 2, (self.y1 + self.y2) / 2

    @property
    def size(self) -> float:  # mean side length
        return ((self.x2 - self.x1) + (self.y2 - self.y1)) / 2


class FaceDetector:
    """mediapipe face detection; `model_selection=1` is the full-range model that also finds small faces."""

    def __init__(self, model_selection: int = 1, min_confidence: float = 0.5) -> None:
        import mediapipe as mp

        self._det = mp.solutions.face_detection.FaceDetection(
            model_selection=model_selection, min_detection_confidence=min_confidence)

    def detect(self, rgb: np.ndarray) -> list[FaceBox]:
        """Faces in an RGB uint8 image [H, W, 3], largest first."""
        h, w = rgb.shape[:2]
        result = self._det.process(rgb)
        boxes = []
        for d in result.detections or []:
            r = d.location_data.relative_bounding_box
            boxes.append(FaceBox(r.xmin * w, r.ymin * h, (r.xmin + r.width) * w, (r.ymin + r.height) * h,
                                 float(d.score[0])))
        return sorted(boxes, key=lambda b: -b.size)

    def close(self) -> None:
        """Release the mediapipe graph."""
        self._det.close()

    def __enter__(self) -> "FaceDetector":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FaceMesher:
    """mediapipe face mesh with iris refinement: 478 points per face.

    `static=False` tracks between consecutive frames (much faster on a video); feed frames in order.
    """

    def __init__(self, static: bool = False, min_confidence: float = 0.5) -> None:
        import mediapipe as mp

        self._mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=static, max_num_faces=1, refine_landmarks=True,
            min_detection_confidence=min_confidence, min_tracking_confidence=min_confidence)

    def mesh(self, rgb: np.ndarray) -> np.ndarray | None:
        """Mesh of the main face in an RGB uint8 image: float32 [478, 3] (x, y pixels; z in x's pixel scale)."""
        h, w = rgb.shape[:2]
        result = self._mesh.process(rgb)
        if not result.multi_face_landmarks:
            return None
        lm = result.multi_face_landmarks[0].landmark
        pts = np.array([(p.x, p.y, p.z) for p in lm], dtype=np.float32)
        # mediapipe's z is relative depth on the same normalised scale as x, hence * width.
        return pts * np.array([w, h, w], dtype=np.float32)

    def reset(self) -> None:
        """Forget the tracked face: the next frame is not adjacent to the previous one."""
        self._mesh.reset()

    def close(self) -> None:
        """Release the mediapipe graph."""
        self._mesh.close()

    def __enter__(self) -> "FaceMesher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
