"""TorsoField: keypoints follow the head pose, outputs are bounded, a frame's torso can be fitted."""

from __future__ import annotations

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
