"""The figures of an evaluation, from rendered and true frames: image quality, mouth landmarks, lip sync without
downloaded networks (mouth opening vs ground truth and vs audio energy), blink (AU45) and head jitter.

Each figure that cannot be computed says why (`Findings.unavailable`). docs/evaluation.md says how each is computed.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ernerf.apps.evaluation.frames import Rendered
from ernerf.constants import FPS, SAMPLE_RATE
from ernerf.io.audio import load_audio
from ernerf.metrics.face import (STABLE_MESH_POINTS, au45_at_open_level, jitter_valid, mean_absolute_error,
                                 mouth_points, open_eye_level)
from ernerf.metrics.image import bbox_crop, psnr, ssim
from ernerf.metrics.lipsync import audio_energy, correlation, landmark_distance, mouth_opening
from ernerf.preprocess.blink import eye_aspect_ratio
from ernerf.preprocess.landmarks import interpolate_missing
from ernerf.preprocess.mediapipe_face import NUM_MESH_POINTS, FaceMesher, native_stderr_silenced

SYNC_LAG = 2  # frames of audio-visual offset forgiven by the lip-sync correlations
MESH_SIZE = 512  # frames are meshed (and LMD measured) at the crop size of preprocessing
MIN_DETECTED = 0.5  # below this share of meshed frames, temporal face figures are not computed
MIN_CURVE = 3  # frames a correlation needs
SSIM_WINDOW = 11  # torchmetrics' Gaussian window: smaller face boxes have no SSIM


@dataclass
class Findings:
    """Scalar figures, the reason for each figure that could not be computed, and per-frame curves."""

    values: dict[str, float] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    curves: dict[str, list[float]] = field(default_factory=dict)

    def skip(self, names: Iterable[str], reason: str) -> None:
        """Record that `names` are unavailable and why."""
        for name in names:
            self.unavailable[name] = reason

    def merge(self, other: Findings) -> Findings:
        """Add another set of findings to this one."""
        self.values.update(other.values)
        self.unavailable.update(other.unavailable)
        self.curves.update(other.curves)
        return self


def face_crop(img: np.ndarray, rect: Sequence[int]) -> np.ndarray:
    """The face box (top, bottom, left, right) of an image."""
    top, bottom, left, right = (int(v) for v in rect)
    return bbox_crop(img, (left, top, right + 1, bottom + 1))


def image_findings(r: Rendered, lpips: Callable[[np.ndarray, np.ndarray], float] | None,
                   lpips_reason: str | None) -> Findings:
    """Per-frame and mean PSNR/SSIM (full frame and face box) and LPIPS."""
    out = Findings()
    faces = [(face_crop(p, rect), face_crop(t, rect)) for p, t, rect in zip(r.renders, r.truths, r.face_rects)]
    curves: dict[str, list[float]] = {
        "psnr": [psnr(p, t) for p, t in zip(r.renders, r.truths)],
        "ssim": [ssim(p, t) for p, t in zip(r.renders, r.truths)],
        "psnr_face": [psnr(p, t) for p, t in faces],
    }
    if min(min(p.shape[:2]) for p, _ in faces) >= SSIM_WINDOW:
        curves["ssim_face"] = [ssim(p, t) for p, t in faces]
    else:
        out.skip(["ssim_face"], f"the face box is under {SSIM_WINDOW} px at this resolution: evaluate with a "
                                "smaller downscale")
    if lpips is not None:
        curves["lpips"] = [lpips(p, t) for p, t in zip(r.renders, r.truths)]
    else:
        out.skip(["lpips"], lpips_reason or "LPIPS unavailable")
    out.values = {name: float(np.mean(v)) for name, v in curves.items()}
    out.curves = curves
    return out


def mesh_sequence(images: Iterable[np.ndarray], size: int = MESH_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Face mesh of consecutive RGB frames scaled to `size` px high, tracked as in preprocessing.

    Returns float32 [T, 478, 3] (NaN where no face) in pixels at that size, and bool [T].
    """
    meshes, valid = [], []
    with native_stderr_silenced(), FaceMesher(static=False) as mesher:  # mediapipe's start-up log
        for img in images:
            scale = size / img.shape[0]
            if scale != 1:
                img = cv2.resize(img, (round(img.shape[1] * scale), size), interpolation=cv2.INTER_CUBIC)
            pts = mesher.mesh(np.ascontiguousarray(img))
            valid.append(pts is not None)
            meshes.append(pts if pts is not None else np.full((NUM_MESH_POINTS, 3), np.nan, np.float32))
    return np.stack(meshes), np.array(valid, bool)


def fill_gaps(mesh: np.ndarray, valid: np.ndarray) -> np.ndarray | None:
    """Interpolate undetected frames in time; None when under MIN_DETECTED of the frames have a face."""
    if len(valid) == 0 or valid.mean() < MIN_DETECTED:
        return None
    return interpolate_missing(np.nan_to_num(mesh), valid)


LIP_NAMES = ("lmd", "lmd_uncentred", "sync_corr")
BLINK_NAMES = ("blink_corr", "blink_mae")
JITTER_NAMES = ("pose_jitter", "pose_jitter_gt", "pose_jitter_ratio")


def lip_findings(render_mesh: np.ndarray, render_ok: np.ndarray, gt_mesh: np.ndarray, gt_ok: np.ndarray) -> Findings:
    """LMD of the iBUG mouth points (frames where both have a face) and correlation of the mouth openings."""
    out, both = Findings(), render_ok & gt_ok
    if not both.any():
        out.skip(LIP_NAMES, f"no face found by the mesh in the renders ({int(render_ok.sum())} of {len(render_ok)} "
                            "frames): the render is not a face yet (train longer) or is too small (lower downscale)")
        return out
    pred, target = mouth_points(render_mesh[both]), mouth_points(gt_mesh[both])
    out.values["lmd"] = landmark_distance(pred, target, align_mean=True)
    out.values["lmd_uncentred"] = landmark_distance(pred, target, align_mean=False)
    filled_r, filled_g = fill_gaps(render_mesh, render_ok), fill_gaps(gt_mesh, gt_ok)
    if filled_r is None or filled_g is None:
        out.skip(["sync_corr"], f"a face was meshed in under {MIN_DETECTED:.0%} of the frames")
        return out
    mouth_r, mouth_g = mouth_opening(filled_r), mouth_opening(filled_g)
    if len(mouth_r) < MIN_CURVE:
        out.skip(["sync_corr"], f"fewer than {MIN_CURVE} frames")
    else:
        out.values["sync_corr"] = correlation(mouth_r, mouth_g, SYNC_LAG)
    out.curves.update(mouth_render=mouth_r.tolist(), mouth_gt=mouth_g.tolist())
    return out


def audio_sync_findings(mouth: np.ndarray | None, energy: np.ndarray | None, name: str, reason: str = "") -> Findings:
    """Correlation (best lag within +-SYNC_LAG frames) of a mouth-opening curve with the audio's energy."""
    out = Findings()
    if mouth is None or energy is None:
        out.skip([name], reason)
    elif len(mouth) < MIN_CURVE:
        out.skip([name], f"fewer than {MIN_CURVE} frames")
    elif np.std(energy) < 1e-9:
        out.skip([name], "the audio is silent over these frames")
    else:
        out.values[name] = correlation(mouth, energy, SYNC_LAG)
    return out


def blink_findings(render_mesh: np.ndarray | None, au_gt: np.ndarray, open_level: float) -> Findings:
    """AU45 measured on the renders (against the subject's open-eye level) vs the ground-truth au.csv."""
    out = Findings()
    if render_mesh is None:
        out.skip(BLINK_NAMES, f"a face was meshed in under {MIN_DETECTED:.0%} of the renders")
        return out
    au_render = au45_at_open_level(eye_aspect_ratio(render_mesh), open_level)
    out.values["blink_mae"] = mean_absolute_error(au_render, au_gt)
    if len(au_gt) < MIN_CURVE or np.std(au_gt) < 1e-6:
        out.skip(["blink_corr"], "the ground-truth AU45 is constant over these (or under 3) frames: no blink to follow")
    else:
        out.values["blink_corr"] = correlation(au_render, au_gt, 0)
    out.curves.update(au45_render=au_render.tolist(), au45_gt=np.asarray(au_gt, float).tolist())
    return out


def jitter_findings(render_mesh: np.ndarray, render_ok: np.ndarray, gt_mesh: np.ndarray, gt_ok: np.ndarray) -> Findings:
    """Jitter of head-rigid mesh points (eye corners, nose bridge) in renders and ground truth, and their ratio."""
    out = Findings()
    pick = list(STABLE_MESH_POINTS)
    jr = jitter_valid(render_mesh[:, pick, :2], render_ok)
    jg = jitter_valid(gt_mesh[:, pick, :2], gt_ok)
    if math.isnan(jr) or math.isnan(jg):
        out.skip(JITTER_NAMES, "no three consecutive frames with a face in both renders and ground truth")
        return out
    out.values.update(pose_jitter=jr, pose_jitter_gt=jg)
    if jg > 1e-9:
        out.values["pose_jitter_ratio"] = jr / jg
    else:
        out.skip(["pose_jitter_ratio"], "the ground truth does not move")
    return out


def subject_energy(audio_path: Path, aud_ids: np.ndarray, num_rows: int) -> tuple[np.ndarray | None, str]:
    """RMS energy of the subject's audio.wav at the evaluated frames' audio rows, or (None, why)."""
    if not audio_path.is_file():
        return None, f"{audio_path} is missing (ingest step): no audio to compare the mouth with"
    energy = audio_energy(load_audio(audio_path, sr=SAMPLE_RATE), SAMPLE_RATE, num_rows, FPS)
    return energy[np.clip(aud_ids, 0, num_rows - 1)], ""


def gt_open_eye_level(mesh_path: Path, valid_path: Path, fallback: np.ndarray | None) -> float | None:
    """The open-eye aspect ratio of the whole clip from mesh.npy (as the blink step), else of `fallback` meshes."""
    if mesh_path.is_file():
        mesh = np.load(mesh_path, mmap_mode="r")
        valid = np.load(valid_path) if valid_path.is_file() else np.ones(len(mesh), bool)
        return open_eye_level(eye_aspect_ratio(np.asarray(mesh[valid])))
    return None if fallback is None else open_eye_level(eye_aspect_ratio(fallback))


def mesher_missing() -> str | None:
    """Why the face mesh cannot run here (mediapipe or OpenCV not installed), or None."""
    missing = [m for m in ("mediapipe", "cv2") if importlib.util.find_spec(m) is None]
    return f"{' and '.join(missing)} not installed: `pip install -e .` (mediapipe==0.10.21)" if missing else None


FACE_NAMES = (*LIP_NAMES, "sync_audio_corr", "sync_audio_corr_gt", *BLINK_NAMES, *JITTER_NAMES)


def face_and_sync(rendered: Rendered, data: Any, au45: np.ndarray) -> Findings:
    """Mesh renders and ground truth the same way; lip, audio-sync, blink and jitter figures."""
    reason = mesher_missing()
    if reason:
        found = Findings()
        found.skip(FACE_NAMES, reason)
        return found
    render_mesh, render_ok = mesh_sequence(rendered.renders)
    gt_mesh, gt_ok = mesh_sequence(rendered.truths)
    found = lip_findings(render_mesh, render_ok, gt_mesh, gt_ok)
    aud_ids = data.aud_ids[rendered.frames].numpy()
    energy, reason = subject_energy(data.layout.audio, aud_ids, int(data.audio.shape[0]))
    filled_r, filled_g = fill_gaps(render_mesh, render_ok), fill_gaps(gt_mesh, gt_ok)
    no_face = "a face was meshed in under half of the {} frames"
    mouth_r, mouth_g = (None if m is None else mouth_opening(m) for m in (filled_r, filled_g))
    found.merge(audio_sync_findings(mouth_r, energy, "sync_audio_corr", reason or no_face.format("rendered")))
    found.merge(audio_sync_findings(mouth_g, energy, "sync_audio_corr_gt", reason or no_face.format("ground-truth")))
    if energy is not None:
        found.curves["energy"] = energy.tolist()
    img_ids = data.img_ids[rendered.frames].numpy()
    au_gt = au45[np.minimum(img_ids, len(au45) - 1)]
    open_level = gt_open_eye_level(data.layout.mesh, data.layout.mesh_valid, filled_g)
    found.merge(blink_findings(filled_r if open_level is not None else None, au_gt, open_level or 0.0))
    found.merge(jitter_findings(render_mesh, render_ok, gt_mesh, gt_ok))
    return found


def syncnet_reason(weights: str | None) -> str:
    """Why SyncNet confidence is not reported."""
    if not weights:
        return "no SyncNet weights given (syncnet_weights=<path>); mouth-vs-audio correlations are reported instead"
    return f"syncnet_weights={weights} was given but this version has no SyncNet scorer; use the correlations"
