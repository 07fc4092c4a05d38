"""callbacks/torso_own_code.py: a torso stage's validation also scores training frames drawn with their own codes."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from callbacks.torso_own_code import TorsoOwnCodeScore
from ernerf.picks import evenly_spaced


class FrameSystem(torch.nn.Module):
    """Renders a training frame's truth when asked for that frame's torso code, a grey frame otherwise (the mean
    code), and records the frames it was asked for."""

    def __init__(self, store, with_torso: bool = True) -> None:
        super().__init__()
        self.store, self.torso = store, (torch.nn.Identity() if with_torso else None)
        self.asked: list[int | None] = []
        self.logged: dict[str, float] = {}

    def render_image(self, c2w, intrinsics, height, width, audio, eye, frame_index, bg, torso_frame=None):
        self.asked.append(torso_frame)
        if torso_frame is None:
            return {"rgb": torch.full((height, width, 3), 0.5)}
        return {"rgb": self.store.image(torso_frame).float() / 255}

    def log(self, name: str, value: float, **options) -> None:
        self.logged[name] = value


@pytest.fixture(scope="module")
def datamodule(tmp_path_factory: pytest.TempPathFactory):
    from datamodules.subject import SubjectDataModule
    from tests.synthetic import write_synthetic_subject

    root = write_synthetic_subject(Path(tmp_path_factory.mktemp("own")) / "sphere", num_frames=12, size=32)
    dm = SubjectDataModule(str(root), "aud_mel.npy", num_rays=64, preload=False, background="plate",
                           parsing_masks=True)
    dm.setup("fit")
    return dm


def test_each_frame_is_drawn_with_its_own_code_and_scored_against_its_truth(datamodule) -> None:
    system = FrameSystem(datamodule.store)
    TorsoOwnCodeScore(frames=4).on_validation_epoch_start(SimpleNamespace(sanity_checking=False, datamodule=datamodule),
                                                        system)
    assert system.asked == evenly_spaced(datamodule.data.num_train, 4).tolist()
    assert set(system.logged) == {"val/torso_own_psnr", "val/torso_own_pasted_psnr", "val/torso_own_seam_psnr"}
    assert system.logged["val/torso_own_psnr"] > 50  # the truth itself, up to the uint8 rounding


def test_a_render_that_is_not_the_frame_scores_low_and_a_head_only_system_is_left_alone(datamodule) -> None:
    grey = FrameSystem(datamodule.store)
    grey.render_image = lambda *a, torso_frame=None, **k: {"rgb": torch.full((32, 32, 3), 0.5)}
    TorsoOwnCodeScore(frames=4).on_validation_epoch_start(SimpleNamespace(sanity_checking=False, datamodule=datamodule),
                                                        grey)
    assert np.isfinite(grey.logged["val/torso_own_pasted_psnr"]) and grey.logged["val/torso_own_psnr"] < 20
    head = FrameSystem(datamodule.store, with_torso=False)
    TorsoOwnCodeScore().on_validation_epoch_start(SimpleNamespace(sanity_checking=False, datamodule=datamodule), head)
    assert head.asked == [] and head.logged == {}


def test_frames_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        TorsoOwnCodeScore(frames=0)
