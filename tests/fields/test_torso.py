"""TorsoField: keypoints follow the head pose, outputs are bounded, a frame's torso can be fitted."""

from __future__ import annotations

import pytest
import torch

from ernerf.fields import TorsoField, pixel_coords, pose_keypoints

SMALL = dict(num_levels=4, log2_hashmap_size=10, desired_resolution=64, hidden_dim=16)


def camera(x: float = 0.0) -> torch.Tensor:
    c2w = torch.eye(4)
    c2w[:3, 3] = torch.tensor([x, 0.0, -2.0])
    return c2w


def test_keypoints_are_the_pinhole_projection_of_the_anchors() -> None:
    anchors = torch.tensor([[0.0, 0.0, 0.0], [0.2, -0.4, 0.0]])
    assert torch.allclose(pose_keypoints(anchors, camera()), torch.tensor([[0.0, 0.0], [0.1, -0.2]]))
    moved = pose_keypoints(anchors, camera(0.2))  # the camera moves right: the points move left in the image
    assert torch.allclose(moved[:, 0], torch.tensor([-0.1, 0.0]))


def test_pixel_coords_span_the_image_symmetrically() -> None:
    coords = pixel_coords(torch.arange(4 * 2), 2, 4)
    assert coords.shape == (8, 2)
    assert torch.allclose(coords[0], torch.tensor([-0.75, -0.5])) and torch.allclose(coords[-1], torch.tensor([0.75, 0.5]))


def test_outputs_are_bounded_and_depend_on_the_pose() -> None:
    torch.manual_seed(0)
    field = TorsoField(num_frames=3, **SMALL)
    coords = torch.rand(64, 2) * 2 - 1
    one = torch.tensor([1])
    a, b = field(coords, camera(), one), field(coords, camera(0.3), one)
    assert a.rgb.shape == (64, 3) and a.alpha.shape == (64, 1) and a.deform.shape == (64, 2)
    assert a.rgb.min() >= 0 and a.rgb.max() <= 1 and a.alpha.min() >= 0 and a.alpha.max() <= 1
    assert not torch.allclose(a.deform, b.deform)
    assert field(coords, camera(), None).rgb.shape == (64, 3)  # new frames use the mean code


def test_fits_a_torso_mask_of_one_frame() -> None:
    torch.manual_seed(0)
    field = TorsoField(num_frames=1, **SMALL)
    coords = pixel_coords(torch.arange(16 * 16), 16, 16)
    target = (coords[:, 1:] > 0.3).float()  # the torso fills the bottom of the frame
    opt = torch.optim.Adam(field.parameters(), lr=1e-2)
    for _ in range(150):
        loss = (field(coords, camera(), torch.tensor([0])).alpha - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.02


def test_code_dropout_draws_a_share_of_training_steps_with_the_mean_code() -> None:
    torch.manual_seed(0)
    field = TorsoField(num_frames=4, code_dropout=0.5, **SMALL)
    coords, one = torch.rand(32, 2) * 2 - 1, torch.tensor([1])
    own = field.draw(coords, camera(), field.individual_codes[1:2]).rgb.detach()
    mean = field.draw(coords, camera(), field.individual_codes.mean(0, keepdim=True)).rgb.detach()
    assert not torch.allclose(own, mean)
    field.eval()  # validation and rendering: always the frame's own code
    assert all(torch.equal(field(coords, camera(), one).rgb, own) for _ in range(20))
    field.train()
    drawn = [field(coords, camera(), one).rgb.detach() for _ in range(200)]
    dropped = sum(torch.allclose(d, mean, atol=1e-6) for d in drawn)
    assert all(torch.allclose(d, own, atol=1e-6) or torch.allclose(d, mean, atol=1e-6) for d in drawn)
    assert 70 <= dropped <= 130  # half of 200, well inside the binomial's spread
    still = TorsoField(num_frames=4, **SMALL)  # code_dropout 0: training draws its own code every step
    still.train()
    assert all(torch.equal(still(coords, camera(), one).rgb, still(coords, camera(), one).rgb) for _ in range(5))


def test_a_dropped_step_moves_every_code_alike() -> None:
    torch.manual_seed(1)
    field = TorsoField(num_frames=3, code_dropout=0.9, **SMALL)
    coords, frame = torch.rand(32, 2) * 2 - 1, torch.tensor([2])
    grads = []
    for _ in range(20):  # p = 0.9: most steps draw the mean code, whose gradient reaches every code, a third each
        field.individual_codes.grad = None
        field(coords, camera(), frame).rgb.sum().backward()
        grads.append(field.individual_codes.grad.clone())
    alike = [g for g in grads if torch.allclose(g[0], g[1]) and torch.allclose(g[1], g[2])]
    own = [g for g in grads if g[:2].abs().sum() == 0]  # the frame's own code alone
    assert len(alike) >= 10 and len(alike) + len(own) == len(grads) and all(g.abs().sum() > 0 for g in alike)
    with pytest.raises(ValueError, match="code_dropout=1.0"):
        TorsoField(num_frames=3, code_dropout=1.0, **SMALL)
