"""Step: `model_data.json` (what the dataset holds) and `contact_sheet.png` (a by-eye check of it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ernerf.errors import ErnerfError
from ernerf.io.atomic import atomic_path, write_text
from ernerf.io.layout import SubjectLayout
from ernerf.picks import evenly_spaced
from ernerf.preprocess.base import PreprocessStep, StepContext
from ernerf.preprocess.check import redo_hint

AXIS_M = 0.06  # length of the drawn head axes
AXIS_BGR = ((0, 0, 255), (0, 200, 0), (255, 80, 0))  # x red, y green, z blue
PARSING_ALPHA = 0.35


def dataset_files(layout: SubjectLayout) -> dict[str, str]:
    """Every dataset file or folder present in the subject folder, by role, relative to its root."""
    named = {
        "video": layout.video, "audio": layout.audio, "preview": layout.preview, "meta": layout.meta,
        "head_bbox": layout.head_bbox, "face_video": layout.face_video, "ori_imgs": layout.ori_imgs,
        "mesh": layout.mesh, "mesh_valid": layout.root / "mesh_valid.npy", "parsing": layout.parsing_dir,
        "background": layout.background, "gt_imgs": layout.gt_dir, "torso_imgs": layout.torso_dir,
        "alpha_video": layout.alpha_video, "matted_video": layout.matted_video, "au": layout.au,
        "track_params": layout.track_params, "transforms_train": layout.transforms("train"),
        "transforms_val": layout.transforms("val"), "contact_sheet": layout.contact_sheet,
    }
    for feats in sorted(layout.root.glob("aud_*.npy")):
        named[feats.stem] = feats
    return {key: str(path.relative_to(layout.root)) for key, path in named.items() if path.exists()}


def step_records(layout: SubjectLayout) -> dict[str, Any]:
    """Timing and facts of every completed step, from the runner's markers."""
    records = {}
    for marker in sorted(layout.steps_dir.glob("*.json")):
        if marker != layout.step_order:
            records[marker.stem] = json.loads(marker.read_text())
    return records


def model_data(layout: SubjectLayout, meta: dict[str, Any]) -> dict[str, Any]:
    """Subject metadata, step facts and file paths as one JSON-able dict."""
    data: dict[str, Any] = {"subject": layout.name, "root": str(layout.root.resolve()), "meta": meta,
                            "steps": step_records(layout), "files": dataset_files(layout)}
    if layout.track_params.exists():
        import torch

        params = torch.load(layout.track_params)
        data["camera"] = {"focal": float(params["focal"][0]),
                          "reproj_err_px": float(params["reproj_err"].mean())}
    data["files"]["contact_sheet"] = str(layout.contact_sheet.relative_to(layout.root))
    data["files"]["model_data"] = str(layout.model_data.relative_to(layout.root))
    return data


# ---------------------------------------------------------------- contact sheet


def overlay_parsing(img: np.ndarray, parsing_bgr: np.ndarray) -> np.ndarray:
    """Blend the parsing colours over the frame, leaving background (white) pixels untouched."""
    fg = np.any(parsing_bgr != 255, axis=-1)
    out = img.copy()
    out[fg] = ((1 - PARSING_ALPHA) * img[fg] + PARSING_ALPHA * parsing_bgr[fg]).astype(np.uint8)
    return out


def draw_landmarks(img: np.ndarray, points: np.ndarray) -> None:
    """Small yellow dots at the 68 landmarks (in place)."""
    for x, y in np.asarray(points)[:, :2]:
        cv2.circle(img, (int(round(x)), int(round(y))), 2, (0, 255, 255), -1, cv2.LINE_AA)


def draw_axes(img: np.ndarray, rot: np.ndarray, trans: np.ndarray, focal: float) -> None:
    """The head frame's origin and axes, projected with the tracked pose and focal (in place)."""
    pts = np.vstack([np.zeros(3), np.eye(3) * AXIS_M])  # origin, x, y, z tips in the head frame
    cam = pts @ rot.T + trans
    c = img.shape[1] / 2.0, img.shape[0] / 2.0
    uv = np.column_stack([focal * cam[:, 0] / cam[:, 2] + c[0], focal * cam[:, 1] / cam[:, 2] + c[1]])
    origin = tuple(int(round(v)) for v in uv[0])
    for tip, colour in zip(uv[1:], AXIS_BGR):
        cv2.arrowedLine(img, origin, tuple(int(round(v)) for v in tip), colour, 3, cv2.LINE_AA, tipLength=0.15)


def frame_tile(layout: SubjectLayout, i: int, track: dict[str, Any] | None) -> np.ndarray:
    """One annotated crop: parsing overlay, 68 landmarks, pose axes, frame label."""
    img = cv2.imread(str(layout.ori_img(i)))
    if img is None:
        raise ErnerfError(f"{layout.ori_img(i)} is missing: {redo_hint(layout.ori_img(i))}.")
    parsing = cv2.imread(str(layout.parsing(i))) if layout.parsing(i).exists() else None
    if parsing is not None and parsing.shape == img.shape:
        img = overlay_parsing(img, parsing)
    if layout.lms(i).exists():
        draw_landmarks(img, np.loadtxt(layout.lms(i)))
    label = f"frame {i}"
    if track is not None:
        draw_axes(img, track["rot"][i], track["trans"][i], track["focal"])
        yaw = np.degrees(track["euler"][i][1])
        label += f"  yaw {yaw:+.0f}  err {track['reproj_err'][i]:.1f}px"
    cv2.putText(img, label, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 0, 0), 4, cv2.LINE_AA)
    cv2.putText(img, label, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 1, cv2.LINE_AA)
    return img


def contact_sheet(layout: SubjectLayout, num_frames: int, count: int = 6, cols: int = 3,
                  tile: int = 320) -> np.ndarray:
    """Grid of `count` evenly spaced annotated frames. # -> [rows*tile, cols*tile, 3] BGR"""
    track = load_track(layout)
    ids = evenly_spaced(num_frames, count)
    tiles = [cv2.resize(frame_tile(layout, int(i), track), (tile, tile), interpolation=cv2.INTER_AREA) for i in ids]
    tiles += [np.zeros_like(tiles[0])] * (-len(tiles) % cols)
    rows = [np.hstack(tiles[r: r + cols]) for r in range(0, len(tiles), cols)]
    return np.vstack(rows)


def load_track(layout: SubjectLayout) -> dict[str, Any] | None:
    """Tracked poses as numpy arrays, or None before the tracking step has run."""
    if not layout.track_params.exists():
        return None
    import torch

    p = torch.load(layout.track_params)
    return {"rot": p["rot"].double().numpy(), "trans": p["trans"].double().numpy(), "focal": float(p["focal"][0]),
            "euler": p["euler"].numpy(), "reproj_err": p["reproj_err"].numpy()}


class ReportStep(PreprocessStep):
    """Write model_data.json and contact_sheet.png so a user can check the dataset at a glance."""

    name = "report"

    def __init__(self, frames: int = 6, columns: int = 3, tile: int = 320) -> None:
        self.frames, self.columns, self.tile = frames, columns, tile

    def outputs(self, layout: SubjectLayout) -> list[Path]:
        return [layout.model_data, layout.contact_sheet]

    def run(self, ctx: StepContext) -> dict[str, Any]:
        layout = ctx.layout
        meta = ctx.meta()
        sheet = contact_sheet(layout, int(meta["num_frames"]), self.frames, self.columns, self.tile)
        with atomic_path(layout.contact_sheet) as tmp:
            if not cv2.imwrite(str(tmp), sheet):
                raise ErnerfError(f"could not write {layout.contact_sheet}: check the disk space and permissions.")
        data = model_data(layout, meta)
        write_text(layout.model_data, json.dumps(data, indent=2, default=str))
        return {"files": len(data["files"]), "contact_sheet": str(layout.contact_sheet)}
