"""What train.py, serve.py, infer.py and evaluate.py refuse from their config and the files alone, before they import
torch, Lightning and mediapipe (seconds on a CPU).

Each entry script imports its application inside Hydra's `main`; it calls the check here first, so that a run that is
refused (an untrained subject, a busy port or run folder, a finished stage, a missing file, options that exclude each
other) answers in about the time Hydra takes to compose its config. A check runs the application's own refusals, in
the application's order, up to the first one that needs the model code; the application makes them again where it
always did (a library caller of `infer_from_config` gets the same errors), so the messages are the same either way.

Nothing this module imports may import torch or Lightning (tests/apps/test_preflight.py); a checkpoint's step and
stage are read from its pickle alone (ernerf.apps.runs.peek_checkpoint).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ernerf.apps.checkpoints import TrainedStage, find_trained
from ernerf.apps.runs import check_run_folder, subject_eval_folder, validate_max_steps
from ernerf.apps.sweeps import is_multirun
from ernerf.errors import ErnerfError
from ernerf.io.atomic import writable_folder
from ernerf.io.layout import SubjectLayout, check_downscale, check_subject_name
from ernerf.io.lock import exclusive_lock
from ernerf.preprocess.check import check_subject

# ---------------------------------------------------------------- train.py


def env_rank() -> int:
    """This process's rank as Lightning reads it from the environment when it loads (RANK, LOCAL_RANK, SLURM_PROCID,
    JSM_NAMESPACE_RANK: the first one set), 0 when none is: the ranks Lightning's DDP launcher starts again, and every
    SLURM task but the first, train inside rank 0's hold of the run folder and check nothing."""
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if os.environ.get(key) is not None:
            return int(os.environ[key])
    return 0


def check_train(cfg: Any) -> None:
    """`ernerf.apps.train.train`'s refusals before it builds anything: another run training in the stage's run folder,
    then a step count that is no number, a subject that is not preprocessed (for the configured audio features),
    options that exclude each other, a missing `ckpt_path`, or a fresh start over an earlier run.

    Left to training: a multirun's jobs (each is recorded and the sweep goes on, ernerf.apps.sweeps.sweep_job),
    `stage=all` (each stage is composed as the chain reaches it), ranks other than 0, and a resume that already
    reached its steps (the step budget needs the dataset's frame count and the planned processes)."""
    if is_multirun() or cfg.stage.get("chain") or env_rank() != 0:
        return
    run_dir = Path(cfg.run_dir)
    with exclusive_lock(run_dir, f"run folder {run_dir}"):  # as train() takes it; training takes it again
        validate_max_steps(cfg.trainer.max_steps)
        data = cfg.datamodule
        if "subject_dir" in data and "audio_file" in data:  # conf/datamodule/subject.yaml: what it reads first
            check_subject(SubjectLayout(Path(data.subject_dir)), data.audio_file)
        check_run_folder(run_dir, cfg.subject, cfg.stage.name, cfg.ckpt_path, cfg.get("overwrite", False))


# ---------------------------------------------------------------- serve.py


def check_port(host: str, port: int) -> None:
    """Refuse a port another program holds, in one line, before the model loads."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ErnerfError(f"port {port} on {host} is in use by another program: give port=<another>.") from exc
            raise ErnerfError(f"cannot listen on {host}:{port} ({exc.strerror}): check host=.") from exc


def check_serve(cfg: Any) -> None:
    """`ernerf.apps.live.serve_command`'s refusals before it loads the avatar: a busy port, an untrained subject."""
    check_port(cfg.host, cfg.port)
    check_subject_name(cfg.subject)
    find_trained(cfg.paths.runs_root, cfg.subject, cfg.stage_name)


# ---------------------------------------------------------------- infer.py


def speech_text(text: str | None, audio: str | None) -> str | None:
    """The text to speak (`text=@file.txt` reads a UTF-8 file), or None when `audio=` drives; one of them is needed."""
    if (text is None) == (audio is None):
        both = "both audio= and text= are given" if text is not None else "no driving audio"
        raise ErnerfError(f"{both}: give either audio=<a wav/mp3/m4a file> or text=\"words to speak\" "
                          "(text=@file.txt for a text file).")
    if text is None:
        return None
    text = str(text)
    if text.startswith("@"):
        path = Path(text[1:]).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ErnerfError(f"cannot read the text file {path} ({exc}): give text=@<a UTF-8 text file>, "
                              "or the words themselves.") from None
    if not any(c.isalnum() for c in text):
        raise ErnerfError("text= is empty: give the words to speak, e.g. text=\"Hello there.\"")
    return text


def text_stem(text: str, source: str) -> str:
    """A file-name stem for spoken text: the text file's stem, or its first words and a digest of all of it (texts
    that begin alike get their own output folders; the same text again goes to the same one, as an audio file does)."""
    if source.startswith("@"):
        return Path(source[1:]).stem
    words = re.sub(r"[^\w]+", "_", " ".join(text.split()[:4])).strip("_")
    digest = hashlib.sha1(" ".join(text.split()).encode("utf-8")).hexdigest()[:6]
    return f"{words[:40] or 'speech'}_{digest}"


def output_paths(output: str | None, subject: str, audio: Path, stage: str) -> tuple[Path, str]:
    """(folder, base name) of the outputs: `output=x.mp4` names the video, `output=dir` a folder."""
    if output is None:
        return Path("outputs") / subject / f"{audio.stem}_{stage}", "result"
    out = Path(output)
    if out.suffix == ".mp4":
        return out.parent, out.stem
    if out.suffix:
        raise ErnerfError(f"output={output} must be a folder or an .mp4 file name.")
    return out, "result"


@dataclass(frozen=True)
class InferencePlan:
    """What infer.py will drive, with which trained stage, and where it writes."""

    text: str | None  # the text to speak, or None when an audio file drives
    audio: Path | None  # the driving audio file, or None when a text does
    trained: TrainedStage
    folder: Path  # the output folder
    name: str  # the outputs' file stem


def plan_inference(cfg: Any) -> InferencePlan:
    """infer.py's plan, and its refusals before it speaks a text or loads the model: no driving audio (or both kinds),
    a missing audio file, an untrained subject, an output that cannot be written."""
    check_subject_name(cfg.subject)
    text = speech_text(cfg.text, cfg.audio)
    audio = None if text is not None else Path(cfg.audio)
    if audio is not None and not audio.is_file():
        raise ErnerfError(f"audio file not found: {audio}. Give audio=<path to a wav/mp3/m4a file>.")
    check_downscale(cfg.downscale)  # before the output folder is made: a refused run leaves nothing behind
    trained = find_trained(cfg.paths.runs_root, cfg.subject, cfg.stage_name)
    folder, name = output_paths(cfg.output, cfg.subject, audio or Path(text_stem(text, cfg.text)), trained.stage.name)
    writable_folder(folder, "output")
    return InferencePlan(text, audio, trained, folder, name)


def check_infer(cfg: Any) -> None:
    """`ernerf.apps.inference.infer_from_config`'s refusals (`plan_inference`), before torch imports."""
    plan_inference(cfg)


# ---------------------------------------------------------------- evaluate.py


def resolve_cross_audio(value: Any) -> tuple[dict[str, Path], str]:
    """The cross-driving audio files by name (`cross_audio=a.wav` or `cross_audio=[a.wav,b.wav]`), or ({}, why there
    are none); a file that is not there raises. A name is the file's stem in word characters, made unique."""
    files = [] if value is None else [value] if isinstance(value, (str, Path)) else list(value)
    if not files:
        return {}, ("no cross_audio given: cross_audio=<a file of unrelated speech> (or [a.wav,b.wav]) drives the "
                    "subject with it")
    named: dict[str, Path] = {}
    for file in map(Path, files):
        if not file.is_file():
            raise ErnerfError(f"cross_audio file {file} not found: give existing audio files "
                              "(cross_audio=a.wav or cross_audio=[a.wav,b.wav]), or leave cross_audio out.")
        stem = re.sub(r"\W+", "_", file.stem).strip("_") or "audio"
        name, k = stem, 2
        while name in named:
            name, k = f"{stem}_{k}", k + 1
        named[name] = file
    return named, ""


def check_evaluate(cfg: Any) -> None:
    """`ernerf.apps.evaluation.evaluate_from_config`'s refusals before it loads the model: an untrained subject (or
    stage), an output that cannot be written, a missing cross_audio file; with `renders=`, `check_renders`. With `run=`
    the application reads the run's checkpoint itself (ernerf/apps/evaluation/frames.py, `resolve_target`), and makes
    every check."""
    check_subject_name(cfg.subject)
    if cfg.renders is not None:
        check_renders(cfg)
        return
    if cfg.run is not None:
        return
    find_trained(cfg.paths.runs_root, cfg.subject, cfg.stage_name)
    writable_folder(Path(cfg.output) if cfg.output else subject_eval_folder(cfg.paths.runs_root, cfg.subject), "output")
    resolve_cross_audio(cfg.cross_audio)


def check_renders(cfg: Any) -> Path:
    """`renders=<folder>`'s refusals: the options that name a checkpoint (it scores frames read from files, no model),
    a folder that is not there, and an output that is missing, is that folder or cannot be written. -> the folder."""
    folder = Path(cfg.renders)
    if cfg.run is not None or cfg.stage_name is not None:
        given = "run=" if cfg.run is not None else "stage="
        raise ErnerfError(f"renders={folder} scores frames read from that folder, {given} names a checkpoint to "
                          "render: give one of them.")
    if cfg.cross_audio:
        raise ErnerfError(f"cross_audio= drives a checkpoint with other speech; renders={folder} reads frames from "
                          "files, with no model to drive: leave cross_audio out (cross-driving figures are unavailable "
                          "with renders=).")
    if not folder.is_dir():
        raise ErnerfError(f"renders={folder} is not a folder: give the folder of the frames to score (PNG or JPG, "
                          "one per validation frame, in name order).")
    if not cfg.output:
        raise ErnerfError(f"renders= needs output=<folder> for the report (e.g. output={folder}_eval): frames read "
                          "from files belong to no run folder.")
    if Path(cfg.output).resolve() == folder.resolve():
        raise ErnerfError(f"output={cfg.output} is the renders= folder: the report's PNGs would join the frames; "
                          "give another folder.")
    writable_folder(Path(cfg.output), "output")
    return folder
