"""File layout of a subject dataset (ER-NeRF compatible names). See docs/dataset.md."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ernerf.errors import ErnerfError


@dataclass(frozen=True)
class SubjectLayout:
    """Every path of one subject folder `<paths.data_root>/<name>/`."""

    root: Path

    @classmethod
    def of(cls, data_root: Path | str, subject: object) -> SubjectLayout:
        """The layout of `<data_root>/<subject>`, the name checked first."""
        return cls(Path(data_root) / check_subject_name(subject))

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def name(self) -> str:
        return self.root.name

    # 1. ingest
    @property
    def video(self) -> Path:  # normalised H.264, 25 fps CFR, original resolution
        return self.root / "input_temp.mp4"

    @property
    def audio(self) -> Path:  # 16 kHz mono PCM
        return self.root / "audio.wav"

    @property
    def preview(self) -> Path:
        return self.root / "preview.png"

    @property
    def meta(self) -> Path:  # ingest facts: fps, frames, size, source, warnings
        return self.root / "meta.json"

    # 2. head box and crop
    @property
    def head_bbox(self) -> Path:
        return self.root / "head_bbox.json"

    @property
    def face_video(self) -> Path:
        return self.root / "face_data.mp4"

    @property
    def ori_imgs(self) -> Path:
        return self.root / "ori_imgs"

    def ori_img(self, i: int) -> Path:
        return self.ori_imgs / f"{i}.jpg"

    def lms(self, i: int) -> Path:
        return self.ori_imgs / f"{i}.lms"

    # 3. landmarks
    @property
    def mesh(self) -> Path:  # float32 [N, 478, 3]: x, y in crop pixels, z in the same scale
        return self.root / "mesh.npy"

    @property
    def mesh_valid(self) -> Path:  # bool [N]: mesh detected in that frame (not interpolated)
        return self.root / "mesh_valid.npy"

    # 4. parsing
    @property
    def parsing_dir(self) -> Path:
        return self.root / "parsing"

    def parsing(self, i: int) -> Path:
        return self.parsing_dir / f"{i}.png"

    # 5. background and composites
    @property
    def background(self) -> Path:
        return self.root / "bc.jpg"

    @property
    def gt_dir(self) -> Path:
        return self.root / "gt_imgs"

    def gt(self, i: int) -> Path:
        return self.gt_dir / f"{i}.jpg"

    @property
    def torso_dir(self) -> Path:
        return self.root / "torso_imgs"

    def torso(self, i: int) -> Path:
        return self.torso_dir / f"{i}.png"

    # 6. matting
    @property
    def alpha_video(self) -> Path:
        return self.root / "alpha.mp4"

    @property
    def matted_video(self) -> Path:
        return self.root / "input.mp4"

    # 7-9. audio features, blink, tracking
    def audio_features(self, kind: str) -> Path:
        return self.root / f"aud_{kind}.npy"

    @property
    def au(self) -> Path:
        return self.root / "au.csv"

    @property
    def track_params(self) -> Path:
        return self.root / "track_params.pt"

    def transforms(self, split: str) -> Path:
        return self.root / f"transforms_{split}.json"

    # 10. report
    @property
    def model_data(self) -> Path:
        return self.root / "model_data.json"

    @property
    def contact_sheet(self) -> Path:
        return self.root / "contact_sheet.png"

    # the preprocessing runner's own files
    @property
    def steps_dir(self) -> Path:  # completion markers of preprocessing steps
        return self.root / ".steps"

    def step_marker(self, name: str) -> Path:  # written when step `name` finished, removed when it is redone
        return self.steps_dir / f"{name}.json"

    @property
    def step_order(self) -> Path:  # the dataset's steps in order, so a check needs no config
        return self.steps_dir / "order.json"

    @property
    def staging_dir(self) -> Path:  # a redo of finished steps works in here until all of it succeeded
        return self.root / ".staging"

    @property
    def commit_dir(self) -> Path:  # the staging folder once its results are being moved in
        return self.root / ".commit"

def check_subject_name(name: object) -> str:
    """A subject name is one plain folder name under its root: no separators, no `..`, not empty, not hidden."""
    text = "" if name is None else str(name)
    if not text.strip():
        raise ErnerfError("subject= is empty: give the subject's folder name, e.g. subject=anna.")
    if "/" in text or "\\" in text or text.startswith(".") or "\0" in text:
        raise ErnerfError(f"subject={text} is not a plain folder name (no '/', no '..', not starting with '.'): "
                          "name the subject, e.g. subject=anna, and set paths.data_root / paths.runs_root to keep "
                          "its files elsewhere.")
    return text


def check_downscale(downscale: object) -> int:
    """Frames are read at 1/downscale of the dataset's size: a whole number >= 1."""
    if isinstance(downscale, bool) or not isinstance(downscale, int) or downscale < 1:
        raise ErnerfError(f"downscale={downscale} must be a whole number >= 1 (1: full size, 2: half, ...).")
    return downscale
