"""Tracking: known poses recovered from a synthetic projected head; smooth, accurate fits on real clips."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ernerf.io.layout import SubjectLayout
from ernerf.preprocess.base import StepContext
from ernerf.preprocess.tracking import FLIP, STABLE_IDS, angular_steps_deg, c2w_matrices, track

CLIPS = ["train/trump_10s.mp4", "train/hdtf_aoc_8s.mp4"]


def euler_xyz(angles_deg: np.ndarray) -> np.ndarray:
    """Rotation matrices from XYZ Euler angles in degrees. # [N,3] -> [N,3,3]"""
    import roma

    return roma.euler_to_rotmat("XYZ", torch.from_numpy(angles_deg), degrees=True).numpy()


def synthetic_head(rng: np.random.Generator) -> np.ndarray:
    """478 points on the front of an ellipsoidal head (metres, x right, y up, z to camera)."""
    pts = rng.uniform(-1, 1, (478, 2)) * [0.07, 0.1]
    pts[[33, 263]] = [[-0.045, 0.03], [0.045, 0.03]]  # outer eye corners 9 cm apart
    pts[[10, 152]] = [[0.0, 0.09], [0.0, -0.1]]  # forehead, chin
    depth = 0.09 * np.sqrt(np.clip(1 - (pts[:, 0] / 0.08) ** 2 - (pts[:, 1] / 0.12) ** 2, 0.05, 1))
    return np.column_stack([pts, depth])


def render_mesh(head: np.ndarray, rot: np.ndarray, trans: np.ndarray, focal: float, noise: float,
                rng: np.random.Generator) -> np.ndarray:
    """What the landmarks step would store: pixel x, y and mediapipe-like relative depth in pixels."""
    cam = np.einsum("nij,kj->nki", rot, head) + trans[:, None]
    uv = focal * cam[..., :2] / cam[..., 2:3] + 256.0 + rng.normal(0, noise, cam[..., :2].shape)
    z = (cam[..., 2] - cam[..., 2].mean(1, keepdims=True)) * focal / cam[..., 2].mean(1, keepdims=True)
    return np.concatenate([uv, z[..., None]], -1).astype(np.float32)


def test_known_poses_are_recovered() -> None:
    rng = np.random.default_rng(0)
    n = 80
    s = np.sin(np.linspace(0, 2 * np.pi, n))
    angles = np.column_stack([10 * s, 25 * np.sin(np.linspace(0, 3 * np.pi, n)), 6 * s])  # pitch, yaw, roll
    rot = FLIP @ euler_xyz(angles)
    trans = np.column_stack([0.02 * s, -0.01 * s, 0.8 + 0.05 * s])
    mesh = render_mesh(synthetic_head(rng), rot, trans, focal=1100.0, noise=0.5, rng=rng)
    fit = track(mesh, np.ones(n, bool), 512, focal_prior=1600.0)  # a prior 45% off the truth
    # Relative rotations do not depend on how the head frame is chosen: R_i R_0^T
    rel_true = np.einsum("nij,kj->nik", rot, rot[0])
    rel_fit = np.einsum("nij,kj->nik", fit.rot, fit.rot[0])
    err = angular_steps_deg(np.stack([rel_true, rel_fit], 1).reshape(-1, 3, 3))[::2]
    assert err.max() < 1.0, f"rotation error up to {err.max():.2f} deg"
    assert fit.reproj_err.mean() < 1.0
    # exact perspective data pull the focal from the prior towards the truth
    assert 1000 < fit.focal < 1320, f"focal {fit.focal:.0f} px, true 1100"


def tracking_subject(prepare_subject, clip: str) -> SubjectLayout:
    """Real landmarks from the pipeline, then the configured tracking step (the pipeline's folder up to tracking:
    shared by the test run, read only)."""
    return SubjectLayout(prepare_subject(clip, upto="tracking"))


@pytest.mark.parametrize("clip", CLIPS)
def test_real_clip_fit_is_accurate_and_smooth(prepare_subject, clip: str) -> None:
    layout = tracking_subject(prepare_subject, clip)
    facts = json.loads((layout.steps_dir / "tracking.json").read_text())["facts"]
    assert facts["reproj_err_px"] < 3.0
    params = torch.load(layout.track_params)
    n = StepContext(layout=layout).num_frames
    assert params["rot"].shape == (n, 3, 3) and params["euler"].shape == (n, 3) and params["trans"].shape == (n, 3)
    steps = angular_steps_deg(params["rot"].double().numpy())
    assert np.median(steps) < 1.0 and steps.max() < 5.0
    assert 300 < float(params["focal"]) < 3000


@pytest.mark.parametrize("clip", CLIPS[:1])
def test_transforms_follow_the_pose_convention(prepare_subject, clip: str) -> None:
    layout = tracking_subject(prepare_subject, clip)
    train = json.loads(layout.transforms("train").read_text())
    val = json.loads(layout.transforms("val").read_text())
    n = StepContext(layout=layout).num_frames
    assert len(train["frames"]) == int(n * 10 / 11) and len(train["frames"]) + len(val["frames"]) == n
    assert val["frames"][0]["img_id"] == int(n * 10 / 11) and val["frames"][-1]["aud_id"] == n - 1
    assert (train["cx"], train["cy"], train["w"], train["h"]) == (256.0, 256.0, 512, 512)
    params = torch.load(layout.track_params)
    mesh = np.load(layout.mesh)
    ids = params["template_ids"].numpy()
    f = train["focal_len"]
    for frame in train["frames"][::50] + val["frames"][:1]:
        c2w = np.array(frame["transform_matrix"])
        assert np.allclose(c2w[:3, :3] @ c2w[:3, :3].T, np.eye(3), atol=1e-5)
        assert 0.3 < c2w[2, 3] < 3.0  # camera in front of the face (+z), a plausible distance
        # OpenGL camera (looks down -z, y up) must put the template on the image landmarks
        gl = (np.linalg.inv(c2w) @ np.c_[params["template"].numpy(), np.ones(len(ids))].T)[:3].T
        uv = np.column_stack([f * gl[:, 0] / -gl[:, 2] + 256, -f * gl[:, 1] / -gl[:, 2] + 256])
        assert np.abs(uv - mesh[frame["img_id"], ids, :2]).mean() < 4.0


def test_c2w_of_a_frontal_head_is_identity_rotation() -> None:
    c2w = c2w_matrices(FLIP[None], np.array([[0.0, 0.0, 0.7]]))[0]
    assert np.allclose(c2w[:3, :3], np.eye(3)) and np.allclose(c2w[:3, 3], [0, 0, 0.7])
    assert len(STABLE_IDS) == len(set(STABLE_IDS))
