"""The validation error per region (face, hair, neck, torso, background) of the evaluated frames."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from ernerf.apps.evaluation.figures import Findings
from ernerf.apps.evaluation.frames import Rendered
from ernerf.metrics.regions import REGIONS, region_errors, region_labels
from ernerf.preprocess.parsing import read_parsing

REGION_NAMES = [f"region_{kind}_{name}" for name in REGIONS for kind in ("psnr", "share")]


@dataclass(frozen=True)
class RegionErrors:
    """Per-region figures, the RMS error map over the frames [H, W] and one frame's region labels [H, W]."""

    found: Findings
    error_map: np.ndarray | None
    labels: np.ndarray | None


def region_findings(rendered: Rendered, data: Any) -> RegionErrors:
    """Split each frame's error by its parsing map (and the face mesh), at the render size."""
    found = Findings()
    img_ids = data.img_ids[rendered.frames].numpy()
    missing = [path for path in map(data.layout.parsing, map(int, img_ids)) if not path.is_file()]
    if missing:
        found.skip(REGION_NAMES, f"{missing[0]} is missing: the regions come from the parsing step's maps")
        return RegionErrors(found, None, None)
    meshes = np.load(data.layout.mesh, mmap_mode="r") if data.layout.mesh.is_file() else None
    height, width = rendered.renders.shape[1:3]
    labels = []
    for i in img_ids:
        parsing = read_parsing(data.layout.parsing(int(i)))
        scale = width / parsing.shape[1]
        xy = None if meshes is None or i >= len(meshes) else np.asarray(meshes[i, :, :2]) * scale
        parsing = cv2.resize(parsing.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
        labels.append(region_labels(parsing, xy))
    values, error_map = region_errors(rendered.renders, rendered.truths, labels)
    found.values.update(values)
    return RegionErrors(found, error_map, labels[len(labels) // 2])
