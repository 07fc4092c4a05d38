"""What a viewer sees of a torso-stage model: `infer.py` pastes new speech into the subject's training frames, each
drawn with its own torso code, and takes from the render the pixels of its paste-back alpha. A torso stage's
validation frames have no code of their own (their mean-code figure falls as the codes learn each frame's body:
docs/evaluation.md, "The torso's budget and the checkpoint it offers"), so evaluate.py also scores training frames
drawn as the video draws them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ernerf.apps.evaluation.figures import Findings
from ernerf.metrics.image import weighted_psnr
from ernerf.progress import Enabled

POSTPROCESS = Path(__file__).resolve().parents[3] / "conf" / "postprocess" / "default.yaml"  # infer.py's paste
OWN_CODE = ("torso_own_psnr", "torso_own_pasted_psnr", "torso_own_seam_psnr")


def paste_weights(data: Any, frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """The paste-back's alpha (conf/postprocess/default.yaml, as infer.py pastes) of each frame's crop, at the render
    size [T, H, W]."""
    import cv2
    from omegaconf import OmegaConf

    from ernerf.postprocess.pasteback import PasteBack, read_parsing_map

    pp = OmegaConf.load(POSTPROCESS)
    paste = PasteBack(pp.scheme, pp.blend, pp.feather_px, pp.dilate_px)
    mesh = np.load(data.layout.mesh, mmap_mode="r") if data.layout.mesh.is_file() else None
    out = []
    for f in frames.tolist():
        img_id = int(data.img_ids[f])
        points = None if mesh is None else np.asarray(mesh[img_id, :, :2], np.float32)
        alpha = paste.alpha(read_parsing_map(data.layout.parsing(img_id)), points)
        out.append(cv2.resize(alpha.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA))
    return np.stack(out)


def pasted_figures(renders: np.ndarray, truths: np.ndarray, weights: np.ndarray,
                   within: np.ndarray | None = None) -> dict[str, float]:
    """Whole-frame PSNR, PSNR over the pixels the paste takes from the render (weighted by its alpha `weights`
    [T, H, W]) and over its feathered edge (weighted by 4 alpha (1 - alpha): where the render meets the frame, a seam if
    they disagree); `within` [T, H, W] (0 or 1): over those pixels alone."""
    within = np.ones(weights.shape) if within is None else within
    return {"psnr": weighted_psnr(renders, truths, within),
            "pasted_psnr": weighted_psnr(renders, truths, weights * within),
            "seam_psnr": weighted_psnr(renders, truths, 4 * weights * (1 - weights) * within)}


def own_code_findings(renderer: Any, data: Any, background: str, every: int | None,
                      progress: Enabled = "auto") -> Findings:
    """`torso_own_*`: every `every`-th training frame rendered with its own audio window, blink and torso code, over
    the stage's background, scored whole, where pasted and at the paste's seam; unavailable without a torso field."""
    from ernerf.apps.evaluation.frames import render_validation
    from ernerf.apps.inference import frame_store

    found = Findings()
    if getattr(renderer, "torso", None) is None:
        found.skip(OWN_CODE, "not a torso-stage checkpoint (its training frames have no torso code)")
        return found
    if not every:
        found.skip(OWN_CODE, "own_code_every=null")
        return found
    frames = np.arange(0, data.num_train, every)
    rendered = render_validation(renderer, data, frame_store(data, background), frames, progress, own_torso=True,
                                 what="training frames with their own torso codes")
    figures = pasted_figures(rendered.renders, rendered.truths, paste_weights(data, frames, data.height, data.width))
    found.values.update({f"torso_own_{name}": value for name, value in figures.items()})
    return found
