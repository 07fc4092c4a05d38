"""What the applications ask of a subject folder before reading it: did preprocessing finish, which step
writes a given file, and the exact command that repairs it. Cheap (a few small JSON files and stats, no
image decoding) and light to import (no config, no models)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ernerf.errors import ErnerfError
from ernerf.io.layout import SubjectLayout

DEFAULT_DATA_ROOT = "data"  # conf/paths/default.yaml: subjects there need no paths.data_root= in a command
PER_FRAME_LANDMARKS = ".lms"  # the landmarks step writes these into the headbox step's ori_imgs/


def check_dataset(layout: SubjectLayout) -> None:
    """Raise ErnerfError if preprocessing left `layout` unfinished or half updated.

    A finished dataset passes, and so does one made by another tool (no `.steps/` folder, e.g. ER-NeRF's
    own scripts): there is nothing to check it against."""
    if layout.commit_dir.exists():
        raise ErnerfError(f"{layout.root}: a preprocessing run was stopped while moving its results in; "
                          f"run `{preprocess_command(layout)}` to finish it.")
    if not layout.steps_dir.is_dir():
        return
    step = first_unfinished(layout)
    if step is not None:
        sources = source_args(layout) if step == "ingest" else None  # a run without ingest done needs the video
        raise ErnerfError(f"{layout.root} is not fully preprocessed: the {step} step is not done; run "
                          f"`{preprocess_command(layout, sources=sources)}` to finish it.")


def first_unfinished(layout: SubjectLayout) -> str | None:
    """The first step of the recorded order lacking its marker or an output the marker lists; None if all are done.

    Markers after that step are not looked at: what those steps read is not finished."""
    for name in recorded_order(layout):
        try:
            record = json.loads(layout.step_marker(name).read_text())
        except (OSError, ValueError):
            return name
        if not all((layout.root / rel).exists() for rel in record.get("outputs", [])):
            return name
    return None


def recorded_order(layout: SubjectLayout) -> list[str]:
    """The steps of this dataset in order, as the runner recorded them; [] before any run recorded them."""
    try:
        return list(json.loads(layout.step_order.read_text())["steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return []


def writer_step(path: Path | str) -> str | None:
    """The preprocessing step that writes dataset file `path` (a subject's file or per-frame file); None if none."""
    found = _writer(Path(path))
    return found[1] if found else None


def redo_hint(path: Path | str) -> str:
    """`the <step> step writes it: run `<command redoing it>`` for a missing or unreadable dataset file."""
    found = _writer(Path(path))
    if found is None:
        return f"run `{preprocess_command(SubjectLayout(Path(path).parent))}`"
    root, step = found
    return f"the {step} step writes it: run `{preprocess_command(SubjectLayout(root), force=step)}`"


def preprocess_command(layout: SubjectLayout, force: str | None = None, sources: list[str] | None = None) -> str:
    """The `python preprocess.py ...` line for this subject, redoing step `force`.

    `sources` are its `video=`/`audio=` words; a redone ingest gets the subject's own by default."""
    root = _real_root(layout.root)
    if sources is None and force == "ingest":
        sources = source_args(SubjectLayout(root))
    words = ["python preprocess.py", *(sources or []), f"subject={root.name}"]
    if os.path.abspath(root.parent) != os.path.abspath(DEFAULT_DATA_ROOT):
        words.append(f"paths.data_root={root.parent}")
    if force:
        words.append(f"preprocess.force=[{force}]")
    return " ".join(words)


def source_args(layout: SubjectLayout) -> list[str]:
    """`video=<the subject's source>` (and `audio=` when that was another file), from meta.json if readable."""
    try:
        meta = json.loads(layout.meta.read_text())
    except (OSError, ValueError):
        meta = {}
    source = meta.get("source", "<path/to/video.mp4>")
    words = [f"video={source}"]
    if meta.get("audio_source", source) != source:
        words.append(f"audio={meta['audio_source']}")
    return words


def _writer(path: Path) -> tuple[Path, str] | None:
    """(subject folder, step) of a file in the subject folder or in one of its per-frame folders."""
    if path.name.startswith("aud_") and path.suffix == ".npy":
        return path.parent, "audio_features"
    own = _writers(SubjectLayout(path.parent)).get(path)
    if own is not None:
        return path.parent, own
    folder = _writers(SubjectLayout(path.parent.parent)).get(path.parent)
    if folder is None:
        return None
    return path.parent.parent, "landmarks" if folder == "headbox" and path.suffix == PER_FRAME_LANDMARKS else folder


def _writers(layout: SubjectLayout) -> dict[Path, str]:
    """Each fixed dataset file or per-frame folder of `layout` -> the step that writes it."""
    return {
        layout.video: "ingest", layout.audio: "ingest", layout.preview: "ingest", layout.meta: "ingest",
        layout.head_bbox: "headbox", layout.face_video: "headbox", layout.ori_imgs: "headbox",
        layout.mesh: "landmarks", layout.mesh_valid: "landmarks", layout.parsing_dir: "parsing",
        layout.background: "background", layout.gt_dir: "composite", layout.torso_dir: "composite",
        layout.alpha_video: "matting", layout.matted_video: "matting", layout.au: "blink",
        layout.track_params: "tracking", layout.transforms("train"): "tracking", layout.transforms("val"): "tracking",
        layout.model_data: "report", layout.contact_sheet: "report",
    }


def _real_root(root: Path) -> Path:
    """The subject folder itself for a path inside a run's staging copy (`<subject>/.staging/<name>`)."""
    layout = SubjectLayout(root.parent.parent)
    return layout.root if root.parent in (layout.staging_dir, layout.commit_dir) else root


def check_subject(layout: SubjectLayout, audio_file: str) -> None:
    """Fail early, naming the preprocessing command, when the folder or a file the training reads is missing."""
    if not layout.root.is_dir():
        raise ErnerfError(f"subject folder {layout.root} does not exist: run "
                          f"`python preprocess.py video=<your video> subject={layout.name}` first (or set paths.data_root).")
    if not (layout.root / audio_file).exists():
        kind = audio_file.removeprefix("aud_").removesuffix(".npy")
        raise ErnerfError(f"{layout.root / audio_file} is missing: the training is configured for audio features '{kind}'. "
                          f"Run `python preprocess.py subject={layout.name} audio_features=<kind> preprocess.force=[audio_features]` "
                          f"or train with the audio_features=<kind> the subject was preprocessed with.")
    check_dataset(layout)
    needed = [layout.transforms("train"), layout.transforms("val"), layout.au, layout.gt_dir, layout.background]
    missing = [p for p in needed if not p.exists()]  # datasets made by other tools have no step markers to check
    if missing:
        raise ErnerfError(f"{missing[0]} is missing: {redo_hint(missing[0])}.")
