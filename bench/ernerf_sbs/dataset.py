"""A subject preprocessed by this project, as ER-NeRF's head stage reads it: checked file by file, then presented in a
separate folder of links (the user's dataset is never written to).

The layouts match (docs/dataset.md) except for the audio features: ER-NeRF picks its file by the ASR model's name
(aud_ds.npy, aud_eo.npy, aud_hu.npy, else aud.npy) and its input width likewise, while this project writes
aud_<kind>.npy, [N, 16, C]. The folder links aud.npy to the chosen kind's file, and ER-NeRF runs with
`--asr_model <C>` (the `audio-width` patch).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from ernerf.errors import ErnerfError
from ernerf.io.layout import SubjectLayout

REPO = Path(__file__).resolve().parents[2]
MARKER = ".ernerf_sbs_dataset.json"
# what ER-NeRF's head stage reads (provider.py), and the preprocessing step of this project that writes it
READS = {"transforms_train.json": "tracking", "transforms_val.json": "tracking", "gt_imgs": "composite",
         "torso_imgs": "composite", "ori_imgs": "landmarks", "bc.jpg": "background", "au.csv": "blink"}
TRANSFORM_KEYS = ("focal_len", "cx", "cy", "h", "w", "frames")
ERNERF_MAX_VAL_FRAMES = 100  # provider.py scores the first 100 frames of the validation split


@dataclass(frozen=True)
class Subject:
    """What the side-by-side needs to know of a checked subject."""

    name: str
    num_train: int
    num_val: int
    feature_file: str
    feature_dim: int

    @property
    def num_val_scored(self) -> int:
        return min(self.num_val, ERNERF_MAX_VAL_FRAMES)


def audio_features(name: str) -> dict:
    """conf/audio_features/<name>.yaml resolved (kind, feature_dim, file), and its name."""
    path = REPO / "conf" / "audio_features" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ErnerfError(f"no audio features '{name}' in conf/audio_features/: one of {', '.join(known)}.")
    return {**OmegaConf.to_container(OmegaConf.load(path), resolve=True), "name": name}


def redo(layout: SubjectLayout, step: str) -> str:
    return f"python preprocess.py subject={layout.name} preprocess.force=[{step}]"


def split_frames(layout: SubjectLayout, split: str) -> list[int]:
    """The img_ids of a split, after checking the fields ER-NeRF reads."""
    transform = json.loads(layout.transforms(split).read_text())
    missing = [k for k in TRANSFORM_KEYS if k not in transform]
    if missing or not transform["frames"]:
        raise ErnerfError(f"{layout.transforms(split)} lacks {missing or 'frames'}: {redo(layout, 'tracking')}.")
    return [int(f["img_id"]) for f in transform["frames"]]


def check_frames(layout: SubjectLayout, frames: list[int]) -> None:
    """Every frame's ground truth, torso image and landmarks: ER-NeRF skips a frame without ground truth (its
    epoch would then be shorter than ours) and stops on a missing torso image or landmark file."""
    for i in frames:
        for path, step in ((layout.gt(i), "composite"), (layout.torso(i), "composite"), (layout.lms(i), "landmarks")):
            if not path.is_file():
                raise ErnerfError(f"{path} is missing: {redo(layout, step)}.")


def check_au(layout: SubjectLayout, frames: int) -> None:
    """au.csv as pandas reads it in ER-NeRF: a ' AU45_r' column (with its space), a row per frame."""
    with layout.au.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows or " AU45_r" not in rows[0] or len(rows) - 1 < frames:
        raise ErnerfError(f"{layout.au} has no ' AU45_r' column or fewer than {frames} rows: {redo(layout, 'blink')}.")


def check_features(layout: SubjectLayout, features: dict, frames: int) -> int:
    """The features file: [N >= frames, 16, feature_dim]; -> C."""
    path = layout.audio_features(features["kind"])
    if not path.is_file():
        raise ErnerfError(f"{path} is missing: python preprocess.py subject={layout.name} "
                          f"audio_features={features['name']} (or choose the kind the subject has).")
    shape = np.load(path, mmap_mode="r").shape
    if len(shape) != 3 or shape[1] != 16 or shape[2] != features["feature_dim"] or shape[0] < frames:
        raise ErnerfError(f"{path} is {list(shape)}, not [>= {frames}, 16, {features['feature_dim']}]: "
                          f"{redo(layout, 'audio_features')} audio_features={features['name']}.")
    return int(shape[2])


def check_subject(layout: SubjectLayout, features: dict) -> Subject:
    """Everything ER-NeRF's head stage reads, checked; one-line errors naming the preprocessing command."""
    if not layout.root.is_dir():
        raise ErnerfError(f"no subject at {layout.root}: python preprocess.py video=<file> subject={layout.name}.")
    for name, step in READS.items():
        if not (layout.root / name).exists():
            raise ErnerfError(f"{layout.root / name} is missing: {redo(layout, step)}.")
    train, val = split_frames(layout, "train"), split_frames(layout, "val")
    check_frames(layout, train + val)
    frames = max(train + val) + 1
    check_au(layout, frames)
    dim = check_features(layout, features, frames)
    return Subject(layout.name, len(train), len(val), layout.audio_features(features["kind"]).name, dim)


def adapt(layout: SubjectLayout, features: dict, dest_root: Path) -> tuple[Path, Subject]:
    """<dest_root>/<subject>/: links to what ER-NeRF reads, aud.npy -> the chosen features. Made again on each call
    (only a folder this function made is ever cleared); -> (the folder, the checked subject)."""
    subject = check_subject(layout, features)
    dest = dest_root / layout.name
    if dest.exists() and not (dest / MARKER).is_file():
        raise ErnerfError(f"{dest} exists and was not made by the side-by-side: give another --out.")
    dest.mkdir(parents=True, exist_ok=True)
    links = {**{name: name for name in READS}, "aud.npy": subject.feature_file}
    for link, target in links.items():
        path = dest / link
        if path.is_symlink():
            path.unlink()
        path.symlink_to((layout.root / target).resolve())
    (dest / MARKER).write_text(json.dumps({"source": str(layout.root.resolve()), "links": links,
                                           "asr_model": str(subject.feature_dim)}, indent=1) + "\n")
    return dest, subject
