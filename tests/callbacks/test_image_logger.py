"""Validation image logger: side-by-side layout, depth colouring, and the sinks it writes to."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from callbacks.image_logger import ValImageLogger, colorize_depth, side_by_side


def test_side_by_side_puts_render_truth_and_depth_next_to_each_other() -> None:
    pred, target = torch.zeros(4, 5, 3), torch.ones(4, 5, 3)
    depth = torch.linspace(1, 2, 20).view(4, 5)
    image = side_by_side(pred, target, depth)
    assert image.shape == (4, 15, 3) and image.dtype == np.uint8
    assert (image[:, :5] == 0).all() and (image[:, 5:10] == 255).all()
    assert not np.array_equal(image[0, 10], image[-1, 14])  # near and far differ in colour


def test_empty_pixels_of_the_depth_map_are_black() -> None:
    opacity = torch.tensor([[1.0, 0.0]])
    coloured = colorize_depth(torch.tensor([[1.0, 5.0]]), opacity)
    assert coloured[0, 1].tolist() == [0, 0, 0] and coloured[0, 0].sum() > 0


def fake_trainer(step: int, loggers: list) -> SimpleNamespace:
    return SimpleNamespace(global_step=step, sanity_checking=False, loggers=loggers, is_global_zero=True)


def test_logger_writes_pngs_and_tensorboard_every_n_steps(tmp_path: Path) -> None:
    tb = TensorBoardLogger(str(tmp_path), name="tb", version="")
    cb = ValImageLogger(every_n_steps=100, max_images=1, png_dir=str(tmp_path / "png"))
    outputs = {"rgb": torch.rand(6, 8, 3), "depth": torch.rand(6, 8), "opacity": torch.ones(6, 8)}
    batch = {"rgb": torch.rand(6, 8, 3)}
    for step in (0, 50, 100, 100):
        for idx in (0, 1):  # only the first image of each validation is logged
            cb.on_validation_batch_end(fake_trainer(step, [tb]), None, outputs, batch, idx)
    pngs = sorted(p.name for p in (tmp_path / "png").iterdir())
    assert pngs == ["val_render_0_step0000000.png", "val_render_0_step0000100.png"]
    written = cv2.imread(str(tmp_path / "png" / pngs[0]))
    assert written.shape == (6, 24, 3)
    tb.experiment.flush()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
