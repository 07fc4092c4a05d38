"""Rays through pixel centres, and ER-NeRF's pose remap into ngp space."""

from __future__ import annotations

import math

import numpy as np
import torch

from ernerf.rendering import get_rays, nerf_matrix_to_ngp


def test_identity_camera_looks_down_plus_z_with_y_down() -> None:
    rays_o, rays_d = get_rays(torch.eye(4)[None], (2.0, 2.0, 2.5, 2.5), H=5, W=5)
    assert rays_o.shape == rays_d.shape == (1, 25, 3)
    assert rays_o.abs().max() == 0
    torch.testing.assert_close(rays_d[0, 12], torch.tensor([0.0, 0.0, 1.0]))  # centre pixel
    torch.testing.assert_close(rays_d[0, 0], torch.tensor([-1.0, -1.0, 1.0]) / math.sqrt(3))  # top-left
    torch.testing.assert_close(rays_d.norm(dim=-1), torch.ones(1, 25))


def test_index_selects_pixels_and_pose_moves_rays() -> None:
    c2w = torch.eye(4)
    c2w[:3, :3] = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # 90 deg about z
    c2w[:3, 3] = torch.tensor([1.0, 2.0, 3.0])
    all_o, all_d = get_rays(c2w[None], (2.0, 2.0, 2.5, 2.5), 5, 5)
    index = torch.tensor([[3, 17, 24]])
    o, d = get_rays(c2w[None], (2.0, 2.0, 2.5, 2.5), 5, 5, index)
    torch.testing.assert_close(d, all_d[:, [3, 17, 24]])
    torch.testing.assert_close(o[0, 0], torch.tensor([1.0, 2.0, 3.0]))
    # Pixel (row 0, col 3): camera dir (0.5, -1, 1) / 1.5, rotated: (1, 0.5, 1) / 1.5.
    torch.testing.assert_close(d[0, 0], torch.tensor([1.0, 0.5, 1.0]) / 1.5)


def test_ngp_remap_cycles_axes_flips_camera_and_scales() -> None:
    pose = np.eye(4)
    pose[:3, 3] = [0.1, 0.2, 0.5]
    ngp = nerf_matrix_to_ngp(pose, scale=4.0, offset=(0.0, 1.0, 0.0))
    expected = np.array([[0, -1, 0, 0.8], [0, 0, -1, 3.0], [1, 0, 0, 0.4], [0, 0, 0, 1]], dtype=float)
    np.testing.assert_allclose(ngp, expected, atol=1e-12)
    torch.testing.assert_close(nerf_matrix_to_ngp(torch.tensor(pose)), torch.tensor(nerf_matrix_to_ngp(pose)))


def _rotation(rx: float, ry: float, rz: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = math.cos(rx), math.sin(rx), math.cos(ry), math.sin(ry), math.cos(rz), math.sin(rz)
    rot_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    rot_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rot_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rot_z @ rot_y @ rot_x


def test_ray_through_a_projected_head_point_passes_through_it_in_ngp_space() -> None:
    # Tracker convention (docs/dataset.md): x_cam = R X + t (OpenCV), c2w = [[R^T, -R^T t]] @ diag(1, -1, -1, 1).
    rot = _rotation(0.1, -0.2, 0.05) @ np.diag([1.0, -1.0, -1.0])  # facing the camera, slightly turned
    t = np.array([0.01, -0.02, 0.5])
    f, c, col, row = 1200.0, 256.0, 300, 200
    depth = 0.47
    x_cam = np.array([(col + 0.5 - c) / f * depth, (row + 0.5 - c) / f * depth, depth])
    head_point = rot.T @ (x_cam - t)
    c2w = np.eye(4)
    c2w[:3, :3], c2w[:3, 3] = rot.T, -rot.T @ t
    c2w = c2w @ np.diag([1.0, -1.0, -1.0, 1.0])
    ngp_c2w = torch.tensor(nerf_matrix_to_ngp(c2w), dtype=torch.float64)
    o, d = get_rays(ngp_c2w[None], (f, f, c, c), 512, 512, torch.tensor([[row * 512 + col]]))
    target = torch.tensor(head_point[[1, 2, 0]] * 4.0)
    along = ((target - o[0, 0]) * d[0, 0]).sum()
    assert along > 0
    torch.testing.assert_close(o[0, 0] + along * d[0, 0], target, atol=1e-9, rtol=0)
