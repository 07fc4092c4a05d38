"""Step: eye blinks as OpenFace's AU45 intensity (`au.csv`) from the mediapipe face mesh.

ER-NeRF conditions the face on AU45 from OpenFace. We measure the same thing from the mesh we
already have: the eye aspect ratio (lid gap over eye width, both eyes), normalised by the subject's
own open-eye level, so a blink is a peak towards 5 and an open eye sits near 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ernerf.errors import ErnerfError
from ernerf.face_topology import EYES, au45_at_open_level, eye_aspect_ratio, open_eye_level  # noqa: F401 - EYES: the step's landmarks
from ernerf.io.atomic import write_text
from ernerf.io.layout import SubjectLayout
from ernerf.preprocess.base import PreprocessStep, StepContext
from ernerf.preprocess.check import redo_hint

HEADER = "frame, timestamp, confidence, success, AU45_r"


def au45_from_ear(ear: np.ndarray, valid: np.ndarray | None = None, open_percentile: float = 90.0,
                  closed_ratio: float = 0.15) -> np.ndarray:
    """Map eye aspect ratio to AU45 0..5: 0 at the subject's open level, 5 at `closed_ratio` of it. # [N] -> [N]

    The open level is a high percentile over detected frames, robust to blinks and to a few
    wide-eyed frames; mediapipe never closes a lid completely, hence a closed level above zero.
    """
    ear = np.asarray(ear, dtype=np.float64)
    ref = ear if valid is None or not np.any(valid) else ear[np.asarray(valid, bool)]
    open_level = open_eye_level(ref, open_percentile)
    if not open_level > 0:
        raise ErnerfError("the eyes measure closed in every frame: check mesh.npy (landmarks step) or the video.")
    return au45_at_open_level(ear, open_level, closed_ratio)


def write_au_csv(path: Path, au45: np.ndarray, valid: np.ndarray, fps: float) -> None:
    """OpenFace-style CSV with ', ' separators (pandas then names the column ' AU45_r', as ER-NeRF reads it)."""
    lines = [HEADER]
    for i, (a, ok) in enumerate(zip(au45, valid)):
        conf = 0.98 if ok else 0.0  # OpenFace writes its detector confidence; we only know detected or not
        lines.append(f"{i + 1}, {i / fps:.3f}, {conf:.2f}, {int(bool(ok))}, {a:.2f}")
    write_text(path, "\n".join(lines) + "\n")


class BlinkStep(PreprocessStep):
    """Write `au.csv`: per-frame AU45 (blink intensity) from the face mesh's eye landmarks."""

    name = "blink"
    requires = ("ingest", "landmarks")

    def __init__(self, open_percentile: float = 90.0, closed_ratio: float = 0.15) -> None:
        self.open_percentile = open_percentile
        self.closed_ratio = closed_ratio

    def outputs(self, layout: SubjectLayout) -> list[Path]:
        return [layout.au]

    def run(self, ctx: StepContext) -> dict[str, Any]:
        layout = ctx.layout
        if not layout.mesh.exists():
            raise ErnerfError(f"{layout.mesh} is missing: {redo_hint(layout.mesh)}.")
        mesh = np.load(layout.mesh)
        valid_path = layout.root / "mesh_valid.npy"
        valid = np.load(valid_path) if valid_path.exists() else np.ones(len(mesh), bool)
        au45 = au45_from_ear(eye_aspect_ratio(mesh), valid, self.open_percentile, self.closed_ratio)
        write_au_csv(layout.au, au45, valid, float(ctx.meta()["fps"]))
        blinks = int(np.sum((au45[1:] >= 2.5) & (au45[:-1] < 2.5)))
        return {"blinks": blinks, "au45_mean": round(float(au45.mean()), 2)}
