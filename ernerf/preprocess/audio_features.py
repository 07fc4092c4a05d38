"""Step: per-frame audio feature windows `aud_<kind>.npy` from the subject's audio.wav."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ernerf.audio.features import AudioFeatureExtractor, extract_features
from ernerf.errors import ErnerfError
from ernerf.io.atomic import atomic_path
from ernerf.io.layout import SubjectLayout
from ernerf.preprocess.base import PreprocessStep, StepContext
from ernerf.preprocess.check import redo_hint


class AudioFeaturesStep(PreprocessStep):
    """Write `aud_<kind>.npy` [N, 16, C]: ER-NeRF's 16-row audio window for every video frame."""

    name = "audio_features"
    requires = ("ingest",)

    def __init__(self, kind: str, extractor: AudioFeatureExtractor) -> None:
        self.kind = kind
        self.extractor = extractor

    def outputs(self, layout: SubjectLayout) -> list[Path]:
        return [layout.audio_features(self.kind)]

    def run(self, ctx: StepContext) -> dict[str, Any]:
        layout = ctx.layout
        if not layout.audio.exists():
            raise ErnerfError(f"{layout.audio} is missing: {redo_hint(layout.audio)}.")
        meta = ctx.meta()
        feats = extract_features(layout.audio, self.extractor, int(meta["num_frames"]), float(meta["fps"]))
        with atomic_path(layout.audio_features(self.kind)) as tmp:
            np.save(tmp, feats)
        return {"kind": self.kind, "shape": list(feats.shape)}
