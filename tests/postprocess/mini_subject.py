"""A small subject folder built from REAL frames (trump_10s.mp4) for paste-back and inference tests.

The head box is chosen by hand (it extends 30 px above the frame, so padding is exercised); the
parsing map and face points are drawn as ellipses around the real head, since these tests check
what paste-back does with a mask, not how good the parsing is. A fake renderer returns the real
crop of whichever training frame the pose it is given belongs to.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import torch

from ernerf.io.layout import SubjectLayout
from ernerf.io.video import iter_frames, run_ffmpeg
from ernerf.postprocess.pasteback import HeadBox, crop_frame

BOX = HeadBox(35, -30, 475, 410)  # 440 px square around the head of trump_10s.mp4 (frame 512x512)
CROP = 512
HEAD = ((256, 285), (175, 215))  # ellipse centre, semi-axes in crop pixels
FACE = ((256, 361), (140, 112))
NECK = (180, 332, 440, 512)  # x1, x2, y1, y2
FEATURE_DIM = 80


def ellipse_mask(centre: tuple[int, int], axes: tuple[int, int]) -> np.ndarray:
    """Filled ellipse, bool [CROP, CROP]."""
    mask = np.zeros((CROP, CROP), np.uint8)
    cv2.ellipse(mask, centre, axes, 0, 0, 360, 1, -1)
    return mask.astype(bool)


def parsing_bgr() -> np.ndarray:
    """Parsing map as cv2 reads it: head blue-on-disk, neck green, torso below, background white. # [512,512,3]"""
    out = np.full((CROP, CROP, 3), 255, np.uint8)
    x1, x2, y1, y2 = NECK
    out[470:] = (0, 0, 255)  # torso (BGR)
    out[y1:y2, x1:x2] = (0, 255, 0)
    out[ellipse_mask(*HEAD)] = (255, 0, 0)
    return out


def face_points(n: int = 478) -> np.ndarray:
    """Points filling the face ellipse (stand-in for the face mesh), crop pixels [n, 3]."""
    rng = np.random.default_rng(0)
    angle, radius = rng.uniform(0, 2 * np.pi, n), np.sqrt(rng.uniform(0, 1, n))
    (cx, cy), (ax, ay) = FACE
    radius[: n // 4] = 1.0  # a ring on the outline so the hull is the ellipse
    return np.stack([cx + ax * radius * np.cos(angle), cy + ay * radius * np.sin(angle), np.zeros(n)], 1)


def c2w(i: int) -> np.ndarray:
    """Distinct camera-to-world per frame: the camera 0.6 m in front, turning slightly (OpenGL)."""
    a = 0.02 * i
    rot = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    pose = np.eye(4)
    pose[:3, :3], pose[:3, 3] = rot, rot @ np.array([0.0, 0.0, 0.6])
    return pose


def write_transforms(layout: SubjectLayout, n: int) -> None:
    frames = [{"img_id": i, "aud_id": i, "transform_matrix": c2w(i).tolist()} for i in range(n)]
    split = int(n * 10 / 11)
    for name, part in (("train", frames[:split]), ("val", frames[split:])):
        meta = {"focal_len": 1200.0, "cx": 256.0, "cy": 256.0, "h": CROP, "w": CROP, "frames": part}
        layout.transforms(name).write_text(json.dumps(meta))


def write_frame_files(layout: SubjectLayout, i: int, crop: np.ndarray) -> None:
    bgr = cv2.cvtColor(crop, cv2.COLOR_RGB2BGR)
    cv2.imwrite(str(layout.ori_img(i)), bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
    cv2.imwrite(str(layout.gt(i)), bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
    parsing = parsing_bgr()
    cv2.imwrite(str(layout.parsing(i)), parsing)
    torso = np.all(parsing == (0, 0, 255), -1) | np.all(parsing == (0, 255, 0), -1)
    cv2.imwrite(str(layout.torso(i)), np.dstack([bgr, torso.astype(np.uint8) * 255]))
    (cx, cy), (ax, ay) = FACE
    angles = np.linspace(0, 2 * np.pi, 68, endpoint=False)
    lms = np.stack([cx + 0.9 * ax * np.cos(angles), cy + 0.9 * ay * np.sin(angles)], 1)
    np.savetxt(layout.lms(i), lms, "%f")


def write_mini_subject(root: Path, clip: Path, num_frames: int = 12) -> SubjectLayout:
    """Write input_temp.mp4, head_bbox.json, crops, parsing, mesh, transforms, au.csv, bc.jpg, aud_mel.npy."""
    layout = SubjectLayout(root)
    for folder in (layout.ori_imgs, layout.gt_dir, layout.parsing_dir, layout.torso_dir):
        folder.mkdir(parents=True, exist_ok=True)
    run_ffmpeg(["-i", str(clip), "-frames:v", str(num_frames), "-an", "-c:v", "libx264", "-crf", "12",
                "-pix_fmt", "yuv420p", "-r", "25", str(layout.video)], "writing the test subject video")
    layout.head_bbox.write_text(json.dumps({"x1": BOX.x1, "y1": BOX.y1, "x2": BOX.x2, "y2": BOX.y2}))
    crops = [crop_frame(frame, BOX, CROP) for frame in iter_frames(layout.video)]
    for i, crop in enumerate(crops):
        write_frame_files(layout, i, crop)
    cv2.imwrite(str(layout.background), cv2.cvtColor(crops[0], cv2.COLOR_RGB2BGR))
    np.save(layout.mesh, np.repeat(face_points()[None], len(crops), 0).astype(np.float32))
    write_transforms(layout, len(crops))
    rows = ["frame, timestamp, confidence, success, AU45_r"]
    rows += [f"{i + 1}, {i / 25:.3f}, 0.98, 1, {i % 3:.3f}" for i in range(len(crops))]
    layout.au.write_text("\n".join(rows) + "\n")
    rng = np.random.default_rng(0)
    np.save(layout.audio_features("mel"), rng.standard_normal((len(crops), 16, FEATURE_DIM)).astype(np.float32))
    return layout


class CropRenderer:
    """Fake renderer: returns the stored crop of the training frame whose pose it is given (optionally shifted)."""

    def __init__(self, layout: SubjectLayout, poses: np.ndarray, img_ids: np.ndarray, shift: int = 0) -> None:
        self.layout, self.poses, self.img_ids, self.shift = layout, poses, img_ids, shift
        self.device = torch.device("cpu")
        self.hparams = {"audio_kind": "mel", "feature_dim": FEATURE_DIM}
        self.calls: list[int] = []  # training frame identified on each call
        self.torso_frames: list[int | None] = []  # the torso's frame each call was given

    def render_image(self, c2w, intrinsics, H, W, audio_window, eye, frame_index, bg,
                     torso_frame=None) -> dict[str, torch.Tensor]:
        assert audio_window.shape == (8, 16, FEATURE_DIM) and bg.shape == (H, W, 3)
        k = int(np.argmin(np.abs(self.poses - c2w.numpy()).sum(axis=(1, 2))))
        self.calls.append(k)
        self.torso_frames.append(torso_frame)
        bgr = cv2.imread(str(self.layout.ori_img(int(self.img_ids[k]))))
        rgb = np.clip(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.int16) + self.shift, 0, 255)
        rgb = cv2.resize(rgb.astype(np.uint8), (W, H), interpolation=cv2.INTER_AREA)
        head = cv2.resize(ellipse_mask(*HEAD).astype(np.float32), (W, H))
        return {"rgb": torch.from_numpy(rgb / 255.0).float(), "opacity": torch.from_numpy(head),
                "depth": torch.from_numpy(head * (0.5 + np.linspace(0, 0.2, W)[None, :])).float()}
