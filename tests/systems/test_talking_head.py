"""TalkingHeadSystem built from the real config: parameter groups, freezing, rendering, loss wiring."""

from __future__ import annotations

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from ernerf.errors import ErnerfError
from ernerf.systems.talking_head import TalkingHeadSystem, exponential_decay
from tests.conftest import compose

SMALL = ["encoder.num_levels=4", "encoder.log2_hashmap_size=10", "encoder.desired_resolution=64", "model.grid.resolution=16",
         "model.marcher.num_samples=8", "trainer.max_steps=100"]


def build(*overrides: str, num_frames: int = 10) -> TalkingHeadSystem:
    cfg = compose("train", ["subject=x", *SMALL, *overrides])
    OmegaConf.resolve(cfg)
    return instantiate(cfg.model, num_frames=num_frames)


def test_parameter_groups_follow_er_nerf_learning_rates() -> None:
    system = build()
    groups = {g["name"]: g for g in system.parameter_groups()}
    assert groups["grids"]["lr"] == 1e-2 and groups["networks"]["lr"] == 1e-3
    assert groups["audio_attention"]["lr"] == 5e-3 and groups["audio_attention"]["weight_decay"] == 1e-4
    ids = {name: {id(p) for p in g["params"]} for name, g in groups.items()}
    encoder = {id(p) for p in system.field.encoder.parameters()}
    assert ids["grids"] == encoder
    assert id(system.field.individual_codes) in ids["networks"]
    assert {id(p) for p in system.audio_encoder.att.parameters()} == ids["audio_attention"]
    assert sum(len(v) for v in ids.values()) == len(list(system.parameters()))  # every parameter exactly once


def test_frozen_patterns_leave_parameters_out_of_the_optimizer() -> None:
    system = build("model.frozen=[field\\.,audio_encoder\\.]")
    assert not any(p.requires_grad for p in system.field.parameters())
    assert system.parameter_groups() == []


def test_empty_occupancy_grid_renders_the_background_exactly() -> None:
    system = build().eval()
    system.grid.occupancy.zero_()
    bg = torch.rand(8, 8, 3)
    c2w = torch.eye(4)
    c2w[2, 3] = -2.4
    out = system.render_image(c2w, (9.0, 9.0, 4.0, 4.0), 8, 8, torch.randn(8, 16, 80), torch.zeros(1), None, bg)
    assert torch.allclose(out["rgb"], bg) and out["opacity"].abs().max() == 0


def test_a_training_frame_renders_with_its_own_codes_and_others_are_refused() -> None:
    system = build().eval()
    c2w = torch.eye(4)
    c2w[2, 3] = -2.4
    args = (c2w, (9.0, 9.0, 4.0, 4.0), 8, 8, torch.randn(8, 16, 80), torch.zeros(1))
    with torch.no_grad():
        system.field.individual_codes[3].fill_(5.0)  # frame 3's colour code differs from the mean
    own, mean = system.render_image(*args, 3, torch.zeros(8, 8, 3)), system.render_image(*args, None, torch.zeros(8, 8, 3))
    assert not torch.equal(own["rgb"], mean["rgb"])
    assert system.frame_index(3).dtype == torch.long and system.frame_index(3).tolist() == [3]
    with pytest.raises(ErnerfError, match="frame_index=None"):
        system.render_image(*args, 10, torch.zeros(8, 8, 3))


def test_a_torso_frame_gives_the_torso_alone_that_frames_code() -> None:
    import copy

    system = build("stage=torso").eval()
    c2w = torch.eye(4)
    c2w[2, 3] = -2.4
    args = (c2w, (9.0, 9.0, 4.0, 4.0), 8, 8, torch.randn(8, 16, 80), torch.zeros(1), None, torch.zeros(8, 8, 3))
    with torch.no_grad():
        system.torso.individual_codes.normal_(0.0, 3.0)  # codes that tell frames apart, as trained ones do
        system.field.individual_codes.normal_(0.0, 3.0)
    own = system.render_image(*args, torso_frame=3)
    # the same system whose every torso code is frame 3's: its mean code is frame 3's, its head's codes unchanged
    only_three = copy.deepcopy(system)
    with torch.no_grad():
        only_three.torso.individual_codes.copy_(system.torso.individual_codes[3].expand_as(only_three.torso.individual_codes))
    for name in ("rgb", "torso_alpha"):
        assert torch.allclose(own[name], only_three.render_image(*args)[name], atol=1e-6)
        assert not torch.allclose(own[name], system.render_image(*args)[name], atol=1e-4)  # not the mean code's
    with pytest.raises(ErnerfError, match="torso_frame=None"):  # a frame with no torso code names the fix
        system.render_image(*args, torso_frame=10)
    head_only = build().eval()  # no torso field: the frame is nothing to it
    assert torch.equal(head_only.render_image(*args, torso_frame=3)["rgb"], head_only.render_image(*args)["rgb"])


def test_loss_terms_are_the_active_ones_and_unknown_terms_are_rejected() -> None:
    system = build()
    n = 32
    rays_o = torch.zeros(n, 3)
    rays_o[:, 2] = -2.4
    rays_d = torch.nn.functional.normalize(torch.randn(n, 3) * 0.05 + torch.tensor([0.0, 0.0, 1.0]), dim=-1)
    batch = {"rgb": torch.rand(n, 3), "face_mask": torch.rand(n) > 0.5}
    out = system.render_rays(rays_o, rays_d, system.condition(torch.randn(8, 16, 80), torch.ones(1), torch.tensor([3])), torch.zeros(n, 3))
    terms = system.loss_terms(out, batch)
    assert set(terms) == {"rgb_uncertainty", "opacity_entropy", "ambient_audio", "ambient_eye"}
    assert all(t.ndim == 0 and torch.isfinite(t) for t in terms.values())
    with pytest.raises((ErnerfError, InstantiationException), match="lpips.*not computed"):
        build("+loss.weights.lpips=0.1")


def test_exponential_decay_halves_the_learning_rate_over_the_run() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = exponential_decay(opt, total_steps=10, final_ratio=0.5)
    for _ in range(10):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)


def test_a_frozen_pattern_that_matches_nothing_is_an_error() -> None:
    """After a rename, a freezing regex that silently matched nothing would train the head in the torso stage."""
    from ernerf.errors import user_error_in

    cfg = compose("train", ["subject=s", "stage=torso", "model.frozen=['head_field\\.']"])
    OmegaConf.resolve(cfg)
    with pytest.raises(InstantiationException) as info:
        instantiate(cfg.model, num_frames=4)
    assert "match no parameter" in str(user_error_in(info.value)) and "'field.'" in str(user_error_in(info.value))
    cfg = compose("train", ["subject=s", "stage=torso"])  # the stage's own patterns freeze the head
    OmegaConf.resolve(cfg)
    system = instantiate(cfg.model, num_frames=4)
    assert not any(p.requires_grad for p in system.field.parameters())
    assert all(p.requires_grad for p in system.torso.parameters())


def test_a_level_window_opens_the_face_levels_over_its_part_of_a_run_from_scratch(monkeypatch) -> None:
    system = build("model.level_window={first:1,until:0.5}")  # SMALL's encoder has 4 levels
    opened = {}
    for fraction in (0.0, 0.25, 0.5, 0.9):
        monkeypatch.setattr(system, "step_fraction", lambda f=fraction: f)
        opened[fraction] = system.levels_open()
    assert opened == {0.0: 1.0, 0.25: 2.5, 0.5: 4.0, 0.9: 4.0}
    assert build().levels_open() is None  # the default: no schedule
    # a stage that starts from trained weights (lips) keeps every level open
    assert build("model.level_window={first:1,until:0.5}", "model.init_from=head.ckpt").levels_open() is None


@pytest.mark.parametrize("overrides, message", [
    (["model.level_window={first:1,until:0.5}", "encoder=grid3d"], "encoder with levels to open"),
    (["model.level_window={first:1,until:0}"], "until in"),
    (["model.level_window={first:9,until:0.5}"], "first in"),
])
def test_a_level_window_the_encoder_cannot_follow_is_refused(overrides: list[str], message: str) -> None:
    with pytest.raises((ErnerfError, InstantiationException), match=message):
        build(*overrides)
