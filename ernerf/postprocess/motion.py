"""Head motion for inference: walk the training sequence forward and back (no jump), optionally smoothed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ernerf.errors import ErnerfError


@dataclass(frozen=True)
class MotionPlan:
    """Per output frame: which training frame drives it, its (smoothed) pose and its blink value."""

    indices: np.ndarray  # int [T] training-frame index of each output frame
    poses: np.ndarray  # float32 [T, 4, 4] camera-to-world
    eye: np.ndarray | None  # float32 [T] AU45, or None when the subject has none


def pingpong_indices(num_frames: int, length: int, start: int = 0) -> np.ndarray:
    """Indices start, start+1, ..., N-1, N-2, ..., 0, 1, ... of `length` frames; neighbours differ by <= 1. # [T]"""
    if num_frames < 1:
        raise ErnerfError("the subject has no frames: re-run `python preprocess.py subject=<name>`.")
    if not 0 <= start < num_frames:
        raise ErnerfError(f"motion start frame {start} is outside the subject's 0..{num_frames - 1} frames: "
                          f"give motion.start= between 0 and {num_frames - 1}.")
    if num_frames == 1:
        return np.zeros(length, dtype=np.int64)
    period = 2 * (num_frames - 1)
    phase = (start + np.arange(length, dtype=np.int64)) % period
    return np.where(phase < num_frames, phase, period - phase)


def smooth_poses(poses: np.ndarray, window: int) -> np.ndarray:
    """Moving-average camera poses over `window` frames (rotations re-projected onto SO(3)). # [N,4,4]"""
    if window <= 1 or len(poses) < 2:
        return poses.astype(np.float32)
    kernel = np.ones(window) / window
    flat = poses[:, :3, :4].reshape(len(poses), -1)
    half = window // 2
    padded = np.pad(flat, ((half, window - 1 - half), (0, 0)), mode="edge")
    mean = np.stack([np.convolve(padded[:, k], kernel, mode="valid") for k in range(flat.shape[1])], axis=1)
    mean = mean.reshape(len(poses), 3, 4)
    out = poses.astype(np.float64).copy()
    out[:, :3, 3] = mean[:, :, 3]
    out[:, :3, :3] = _project_rotations(mean[:, :, :3])
    return out.astype(np.float32)


def _project_rotations(mats: np.ndarray) -> np.ndarray:
    """Nearest rotation of each 3x3 matrix (SVD), keeping the determinant +1. # [N,3,3]"""
    u, _, vt = np.linalg.svd(mats)
    det = np.sign(np.linalg.det(u @ vt))
    u[:, :, -1] *= det[:, None]
    return u @ vt


def plan_motion(poses: np.ndarray, eye: np.ndarray | None, length: int, start: int = 0,
                smooth_window: int = 1) -> MotionPlan:
    """Build the ping-pong motion of `length` output frames from a subject's poses [N,4,4] and AU45 [N]."""
    if length < 1:
        raise ErnerfError("nothing to render: the audio gives 0 frames at 25 fps. Give a longer audio file.")
    if eye is not None and len(eye) != len(poses):
        raise ErnerfError(f"the subject has {len(poses)} poses but {len(eye)} blink values in au.csv: "
                          "re-run `python preprocess.py subject=<name> preprocess.force=[blink]`.")
    indices = pingpong_indices(len(poses), length, start)
    smoothed = smooth_poses(np.asarray(poses), smooth_window)
    return MotionPlan(indices=indices, poses=smoothed[indices],
                      eye=None if eye is None else np.asarray(eye, dtype=np.float32)[indices])
