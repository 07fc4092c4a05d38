"""A tiny analytic subject in the docs/dataset.md layout: a normal-coloured sphere seen from known cameras."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from ernerf.io.layout import SubjectLayout

SPHERE_RADIUS = 0.1  # metres: a "head" of 20 cm, 0.4 in the model's scaled space
CAMERA_DISTANCE = 0.6  # metres
FEATURE_DIM = 80  # mel bands (conf/audio_features/mel.yaml)


def look_at_origin(theta: float, phi: float) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV world-to-camera (R [3,3], t [3]) of a camera on a sphere around the origin."""
    centre = CAMERA_DISTANCE * np.array([np.sin(theta) * np.cos(phi), np.sin(phi), np.cos(theta) * np.cos(phi)])
    forward = -centre / np.linalg.norm(centre)
    down = np.array([0.0, -1.0, 0.0])
    down = down - forward * (down @ forward)
    down /= np.linalg.norm(down)
    right = np.cross(down, forward)
    rot = np.stack([right, down, forward])  # rows: camera axes in world coordinates
    return rot, -rot @ centre


def transform_matrix(rot: np.ndarray, trans: np.ndarray) -> np.ndarray:
    """The dataset's camera-to-world in the OpenGL convention (docs/dataset.md, pose convention)."""
    c2w = np.eye(4)
    c2w[:3, :3] = rot.T
    c2w[:3, 3] = -rot.T @ trans
    return c2w @ np.diag([1.0, -1.0, -1.0, 1.0])


def render_sphere(rot: np.ndarray, trans: np.ndarray, focal: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Analytic render: rgb [H, W, 3] in [0, 1] (0.5 + 0.5 * world normal) and a hit mask [H, W]."""
    v, u = np.mgrid[0:size, 0:size] + 0.5
    d_cam = np.stack([(u - size / 2) / focal, (v - size / 2) / focal, np.ones_like(u)], -1)
    d = d_cam @ rot  # world directions: R^T d_cam for every pixel
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    origin = -rot.T @ trans
    b = d @ origin
    disc = b**2 - (origin @ origin - SPHERE_RADIUS**2)
    hit = disc > 0
    depth = -b - np.sqrt(np.clip(disc, 0, None))
    normal = (origin + depth[..., None] * d) / SPHERE_RADIUS
    return np.where(hit[..., None], 0.5 + 0.5 * normal, 0.0), hit


def background_plate(size: int) -> np.ndarray:
    """A smooth two-colour gradient [H, W, 3] in [0, 1]."""
    ramp = np.linspace(0.0, 1.0, size)
    return np.stack([0.2 + 0.6 * ramp[None, :].repeat(size, 0), np.full((size, size), 0.3), 0.8 - 0.5 * ramp[:, None].repeat(size, 1)], -1)


def fake_landmarks(hit: np.ndarray) -> np.ndarray:
    """68 points [68, 2] (x, y) spread over the sphere's silhouette; 48:60 (lips) in its lower part."""
    ys, xs = np.nonzero(hit)
    cx, cy, r = xs.mean(), ys.mean(), (xs.max() - xs.min()) / 2
    angles = np.linspace(0, 2 * np.pi, 68, endpoint=False)
    lms = np.stack([cx + 0.9 * r * np.cos(angles), cy + 0.9 * r * np.sin(angles)], -1)
    lips = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    lms[48:60] = np.stack([cx + 0.3 * r * np.cos(lips), cy + 0.5 * r + 0.15 * r * np.sin(lips)], -1)
    return lms


def write_au_csv(path: Path, au45: np.ndarray) -> None:
    """OpenFace-style au.csv with the ', ' separator."""
    rows = ["frame, timestamp, confidence, success, AU45_r"]
    rows += [f"{i + 1}, {i / 25:.3f}, 0.98, 1, {a:.3f}" for i, a in enumerate(au45)]
    path.write_text("\n".join(rows) + "\n")


def write_synthetic_subject(root: Path, num_frames: int = 12, size: int = 32, seed: int = 0) -> Path:
    """Write the subject folder (transforms, gt_imgs, parsing, torso_imgs, bc.jpg, aud_mel.npy, au.csv, lms)."""
    layout = SubjectLayout(root)
    for folder in (layout.gt_dir, layout.parsing_dir, layout.ori_imgs, layout.torso_dir):
        folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    focal = 1.1 * size
    plate = background_plate(size)
    cv2.imwrite(str(layout.background), cv2.cvtColor((plate * 255).round().astype(np.uint8), cv2.COLOR_RGB2BGR))
    frames = []
    for i in range(num_frames):
        theta, phi = 0.5 * np.sin(2 * np.pi * i / num_frames), 0.15 * np.cos(2 * np.pi * i / num_frames)
        rot, trans = look_at_origin(theta, phi)
        rgb, hit = render_sphere(rot, trans, focal, size)
        image = np.where(hit[..., None], rgb, plate)
        cv2.imwrite(str(layout.gt(i)), cv2.cvtColor((image * 255).round().astype(np.uint8), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 100])
        parsing = np.where(hit[..., None], np.array([255, 0, 0], np.uint8), np.uint8(255))  # BGR head = (255, 0, 0)
        cv2.imwrite(str(layout.parsing(i)), parsing.astype(np.uint8))
        cv2.imwrite(str(layout.torso(i)), np.zeros((size, size, 4), np.uint8))
        np.savetxt(layout.lms(i), fake_landmarks(hit), "%f")
        frames.append({"img_id": i, "aud_id": i, "transform_matrix": transform_matrix(rot, trans).tolist()})
    split = int(num_frames * 10 / 11)
    for name, part in (("train", frames[:split]), ("val", frames[split:])):
        meta = {"focal_len": focal, "cx": size / 2, "cy": size / 2, "h": size, "w": size, "frames": part}
        layout.transforms(name).write_text(json.dumps(meta))
    np.save(layout.audio_features("mel"), rng.standard_normal((num_frames, 16, FEATURE_DIM)).astype(np.float32))
    write_au_csv(layout.au, 2.5 + 2.5 * np.sin(np.arange(num_frames)))
    layout.meta.write_text(json.dumps({"fps": 25, "num_frames": num_frames, "width": size, "height": size}))
    return layout.root
