"""Validation image logger: the three panels of a frame (render, ground truth, depth with its scale), the depth
colours shared with inference, and the sinks it writes to."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from callbacks.image_logger import ValImageLogger, side_by_side, val_panels
from ernerf.postprocess.depth import colorize_depth, depth_range


def test_panels_are_render_truth_and_depth_with_a_colour_bar() -> None:
    pred, target = torch.zeros(4, 5, 3), torch.ones(4, 5, 3)
    depth = torch.linspace(1, 2, 20).view(4, 5)
    panels, (near, far) = val_panels(pred, target, depth)
    assert (panels["render"] == 0).all() and (panels["truth"] == 255).all()
    assert panels["depth"].shape[0] == 4 and panels["depth"].shape[1] > 5  # the scale beside the depth
    image = side_by_side(panels)
    assert image.shape == (4, 10 + panels["depth"].shape[1], 3) and image.dtype == np.uint8
    assert near < far and not np.array_equal(image[0, 10], image[-1, 14])  # near and far differ in colour


def test_depth_is_coloured_as_inference_colours_it_and_empty_pixels_are_black() -> None:
    depth = torch.rand(6, 8) + 0.5
    opacity = torch.ones(6, 8)
    opacity[0, 0] = 0.0
    panels, (near, far) = val_panels(torch.rand(6, 8, 3), torch.rand(6, 8, 3), depth, opacity)
    covered = np.where(opacity.numpy() > 0.5, depth.numpy(), 0.0)
    assert (near, far) == depth_range(covered)
    assert np.array_equal(panels["depth"][:, :8], colorize_depth(covered, near, far))
    assert panels["depth"][0, 0].tolist() == [0, 0, 0] and panels["depth"][1, 1].sum() > 0


def fake_trainer(step: int, loggers: list) -> SimpleNamespace:
    return SimpleNamespace(global_step=step, sanity_checking=False, loggers=loggers, is_global_zero=True)


def test_logger_writes_pngs_and_tensorboard_panels_every_n_steps(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = TensorBoardLogger(str(tmp_path), name="tb", version="")
    cb = ValImageLogger(every_n_steps=100, max_images=1, png_dir=str(tmp_path / "png"))
    outputs = {"rgb": torch.rand(6, 8, 3), "depth": torch.rand(6, 8), "opacity": torch.ones(6, 8)}
    batch = {"rgb": torch.rand(6, 8, 3)}
    for step in (0, 50, 100, 100):
        for idx in (0, 1):  # only the first image of each validation is logged
            cb.on_validation_batch_end(fake_trainer(step, [tb]), None, outputs, batch, idx)
    pngs = sorted(p.name for p in (tmp_path / "png").iterdir())
    assert pngs == ["frame0_step0000000.png", "frame0_step0000100.png"]
    written = cv2.imread(str(tmp_path / "png" / pngs[0]))
    assert written.shape[0] == 6 and written.shape[1] > 24
    tb.experiment.flush()
    events = EventAccumulator(str(tmp_path / "tb")).Reload()
    tags = events.Tags()["images"]
    assert sorted(tags) == ["val_images/0_depth", "val_images/0_render", "val_images/0_truth"]
    assert {e.step for e in events.Images("val_images/0_depth")} == {0, 100}  # not at step 50
