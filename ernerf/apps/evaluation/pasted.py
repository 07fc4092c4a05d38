"""What a viewer sees of a torso-stage model: `infer.py` pastes new speech into the subject's training frames, each
drawn with its own torso code, and takes from the render the pixels of its paste-back alpha. A torso stage's
validation frames have no code of their own (their mean-code figure falls as the codes learn each frame's body:
docs/evaluation.md, "The torso's budget and the checkpoint it offers"), so evaluate.py also scores training frames
drawn as the video draws them."""

from __future__ import annotations

from typing import Any

import numpy as np

from ernerf.apps.evaluation.figures import Findings
from ernerf.metrics.image import pasted_figures
from ernerf.postprocess.pasteback import paste_weights
from ernerf.progress import Enabled

OWN_CODE = ("torso_own_psnr", "torso_own_pasted_psnr", "torso_own_seam_psnr")


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
