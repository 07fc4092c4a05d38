"""Evaluation of a trained stage on the subject's held-back validation frames (never trained on) and on unrelated
audio, or of another method's renders of those frames (`renders=`): what `python evaluate.py` does.
docs/evaluation.md says how each figure is computed."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.contrib.logging import logging_redirect_tqdm

from datamodules.subject import read_au45
from ernerf.apps.checkpoints import TrainedStage, audio_extractor
from ernerf.apps.evaluation.figures import (Findings, audio_sync_findings, face_and_sync, fill_gaps, image_findings,
                                            mesh_sequence, mesher_missing, syncnet_reason)
from ernerf.apps.evaluation.frames import (FirstFrame, Rendered, pose_options, read_renders, render_subject,
                                           resolve_target, write_renders)
from ernerf.apps.evaluation.pasted import OWN_CODE, own_code_findings
from ernerf.apps.evaluation.regions import region_findings
from ernerf.apps.evaluation.report import (EvalResult, Source, build_report, log_metrics, print_summary,
                                           run_loggers, write_outputs)
from ernerf.apps.inference import (Renderer, SubjectView, audio_kind, driving_features, load_subject,
                                  render_planned_frame)
# evaluate.py checks the cross_audio files before it imports this module (ernerf/apps/preflight.py)
from ernerf.apps.preflight import check_renders, resolve_cross_audio
from ernerf.apps.runs import checkpoint_step, stale_warning
from ernerf.audio.features import AudioFeatureExtractor
from ernerf.constants import FPS, SAMPLE_RATE
from ernerf.io.atomic import writable_folder
from ernerf.io.audio import load_audio
from ernerf.io.layout import check_subject_name
from ernerf.metrics.lipsync import audio_energy, mouth_opening
from ernerf.metrics.perceptual import lpips_scorer
from ernerf.postprocess.motion import plan_motion
from ernerf.progress import Enabled, progress_bar
from ernerf.systems.loading import loader_for

log = logging.getLogger(__name__)


def evaluate_from_config(cfg: Any, system_loader: Callable[[Path, str], Renderer] | None = None) -> EvalResult:
    """Everything `python evaluate.py subject=<name> [stage=...|run=...|renders=...]` does."""
    check_subject_name(cfg.subject)
    clock = PhaseClock()
    if cfg.renders is None:
        frames = checkpoint_frames(cfg, clock, system_loader or loader_for(cfg))  # conf/evaluate.yaml's engine
    else:
        frames = folder_frames(cfg, clock)
    with clock("validation figures"):
        found = held_out_findings(cfg, frames.rendered, frames.data)
        regions = region_findings(frames.rendered, frames.data)
        found.merge(regions.found)
    with clock("own torso codes"):
        found.merge(frames.own_codes())
    with clock("cross-driving"):
        found.merge(frames.cross_driving())
    report = build_report(cfg.subject, frames.source, frames.rendered, found, frames.cross_audio)
    report["warnings"] = frames.warnings
    report["frames"]["cross_downscale"] = cross_downscale(cfg)  # the size cross_sync_audio_corr was measured at
    with clock("report"):
        files = write_outputs(frames.out_dir, report, frames.rendered, found, cfg.report_frames, regions)
        if cfg.get("save_renders"):
            files["renders"] = write_renders(frames.out_dir / "renders", frames.rendered)
        loggers = run_loggers(frames.run_dir, frames.out_dir, cfg.wandb_project)
        report["logged_to"] = log_metrics(loggers, found.values, frames.source.logged_step)
    report["seconds"] = clock.rounded()
    files["metrics"].write_text(json.dumps(report, indent=2))
    return EvalResult(frames.out_dir, report, files)


@dataclass
class Frames:
    """The frames an evaluation scores beside the truth, the subject they show, what made them (as metrics.json names
    it), where the figures go, and the figures only a model can give (`cross_driving`)."""

    rendered: Rendered
    data: Any  # the subject parsed as training parses it (SubjectData)
    source: Source
    out_dir: Path
    run_dir: Path | None  # the run whose loggers get test/<metric>; None: a CSV in out_dir
    warnings: list[str]
    cross_audio: dict[str, Path]
    cross_driving: Callable[[], Findings]
    own_codes: Callable[[], Findings]  # a torso stage's training frames as the video draws them


def checkpoint_frames(cfg: Any, clock: PhaseClock, system_loader: Callable[[Path, str], Renderer]) -> Frames:
    """The validation frames rendered by the checkpoint that `run=` or `stage=` names (the latest stage: neither)."""
    target = resolve_target(cfg.paths.runs_root, cfg.subject, cfg.run, cfg.stage_name)
    out_dir = writable_folder(Path(cfg.output) if cfg.output else target.out_dir, "output")
    cross_audio, cross_reason = resolve_cross_audio(cfg.cross_audio)
    with clock("load"):
        renderer = system_loader(target.checkpoint, cfg.device)
    step = checkpoint_step(target.checkpoint) or 0  # now: training may still be rotating its checkpoints
    audio_file = target.trained.feature_file(audio_kind(renderer.hparams)[0])
    with clock("validation renders"):
        rendered, data = render_subject(cfg, renderer, target.trained.stage.background, audio_file,
                                        duration_note(cfg, renderer, cross_audio))
    warnings = [w for w in [stale_warning(target.checkpoint.parents[1], cfg.subject)] if w]
    return Frames(rendered, data, Source.of(target, step), out_dir, target.run_dir, warnings, cross_audio,
                  lambda: cross_findings(cfg, renderer, target.trained, audio_file, cross_audio, cross_reason),
                  lambda: own_code_findings(renderer, data, target.trained.stage.background, cfg.own_code_every,
                                            cfg.get("progress", "auto")))


def folder_frames(cfg: Any, clock: PhaseClock) -> Frames:
    """Another method's validation frames, read from the `renders=` folder: no checkpoint, no model, no run."""
    folder = check_renders(cfg)
    with clock("load"):
        rendered, data = read_renders(cfg, folder)
    no_model, no_codes = Findings(), Findings()
    no_model.skip([CROSS], f"renders={folder}: frames read from files cannot be driven by other speech")
    no_codes.skip(OWN_CODE, f"renders={folder}: no model to draw training frames with")
    return Frames(rendered, data, Source.folder(folder), Path(cfg.output), None, [], {}, lambda: no_model,
                  lambda: no_codes)


LONG_RUN_SECONDS = 120.0  # an evaluation expected to take longer on a CPU says so when its first frame is rendered


def duration_note(cfg: Any, renderer: Renderer, sources: dict[str, Path]) -> FirstFrame:
    """What evaluate.py says once the first validation frame has rendered: on a CPU, when the renders will take
    long, about how long and what makes them quicker. A render's cost goes with its pixels."""
    def note(first_seconds: float, height: int, frames: int) -> None:
        if torch.device(renderer.device).type != "cpu":
            return
        cross = sum(cross_frames(audio, cfg.cross_max_seconds) for audio in sources.values())  # reads each file
        cross_height = height * cfg.downscale // cross_downscale(cfg)
        seconds = first_seconds * (frames + cross * (cross_height / height) ** 2)
        if seconds < LONG_RUN_SECONDS:
            return
        what = f"{frames} validation frames at {height} px" + (
            f" and {cross} cross-driven frames at {cross_height} px" if cross else "")
        log.info("rendering %s on the CPU, %.1f s a %d px frame: about %d minutes. Quicker: %s", what, first_seconds,
                 height, round(seconds / 60), quicker_options(cfg, cross))

    return note


def quicker_options(cfg: Any, cross: int) -> str:
    """The settings that shorten a CPU evaluation, and what each changes."""
    options = [f"downscale={2 * cfg.downscale} (every render at a quarter of the pixels; changes every figure)"]
    if cross:
        options[:0] = [f"cross_downscale={2 * cross_downscale(cfg)} (the cross-driven renders only; changes "
                       f"{CROSS})", f"cross_max_seconds={cfg.cross_max_seconds / 2:g}", "cross_audio=null"]
    return ", ".join(options)


class PhaseClock:
    """Wall seconds of the phases of a run, in the order they ran (`with clock("name"): ...`)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def rounded(self) -> dict[str, float]:
        """Each phase's seconds and their `total`, to 0.1 s."""
        return {name: round(s, 1) for name, s in {**self.seconds, "total": sum(self.seconds.values())}.items()}


def evaluate_command(cfg: Any) -> EvalResult:
    """What `python evaluate.py` does with its config: evaluate, then print the figures and where they went."""
    with logging_redirect_tqdm():  # a note logged while a progress bar is drawn goes above the bar, not into it
        result = evaluate_from_config(cfg)
    print_summary(result)
    return result


def held_out_findings(cfg: Any, rendered: Rendered, data: Any) -> Findings:
    """Image, face, sync, blink and jitter figures of the validation frames; SyncNet's reason."""
    lpips, lpips_reason = lpips_scorer(cfg.lpips.net, cfg.lpips.weights)
    found = image_findings(rendered, lpips, lpips_reason)
    found.merge(face_and_sync(rendered, data, read_au45(data.layout.au)))
    found.skip(["syncnet_conf"], syncnet_reason(cfg.syncnet_weights))
    return found


CROSS = "cross_sync_audio_corr"  # the mean over the cross-driving sources; each has its own `<CROSS>_<name>`


def cross_findings(cfg: Any, renderer: Renderer, trained: TrainedStage, audio_file: str, sources: dict[str, Path],
                   reason: str) -> Findings:
    """The cross-driving figure of each source, and their mean; or why they are unavailable."""
    names = [f"{CROSS}_{name}" for name in sources]
    reason = reason if not sources else (mesher_missing() or "")
    found = Findings()
    if reason:
        found.skip([CROSS, *names], reason)
        return found
    view = load_subject(Path(cfg.paths.data_root) / cfg.subject, audio_file, trained.stage.background,
                        downscale=cross_downscale(cfg), **pose_options(cfg))
    kind, dim = audio_kind(renderer.hparams)
    extractor = audio_extractor(trained, kind, dim, cfg.audio_extractor)  # once: a speech model loads on first use
    each = Findings()
    for name, audio in sources.items():
        each.merge(cross_drive(renderer, view, audio, name, cfg.cross_max_seconds, extractor,
                               cfg.get("progress", "auto")))
    values = [each.values[n] for n in names if n in each.values]
    if values:
        found.values[CROSS] = float(np.mean(values))
    else:
        found.skip([CROSS], f"no cross-driving source gave a figure: see {', '.join(names)}")
    return found.merge(each)


def cross_downscale(cfg: Any) -> int:
    """The downscale of the cross-driven renders: `cross_downscale`, or the validation frames' `downscale`."""
    value = cfg.get("cross_downscale")
    return cfg.downscale if value is None else value


def most_cross_frames(max_seconds: float) -> int:
    """The frames of `max_seconds` of cross-driving audio; at least 3, the fewest a correlation takes."""
    return max(3, int(max_seconds * FPS))


def cross_frames(audio: Path, max_seconds: float) -> int:
    """How many frames `cross_drive` renders for an audio file: one per 40 ms of it, up to `most_cross_frames`."""
    seconds = len(load_audio(audio, sr=SAMPLE_RATE, max_seconds=max_seconds + 1.0)) / SAMPLE_RATE
    return min(int(round(seconds * FPS)), most_cross_frames(max_seconds))


def cross_drive(renderer: Renderer, view: SubjectView, audio: Path, name: str, max_seconds: float,
                extractor: AudioFeatureExtractor, progress: Enabled = "auto") -> Findings:
    """Render the subject speaking unrelated audio; correlate its mouth opening with that audio's energy.
    `extractor`: the checkpoint's audio features (`ernerf.apps.checkpoints.audio_extractor`).

    The figure is `cross_sync_audio_corr_<name>`, the curves `cross_energy_<name>` and `cross_mouth_render_<name>`."""
    kind, dim = audio_kind(renderer.hparams)
    feats, _ = driving_features(audio, kind, dim, extractor)
    n = min(len(feats), most_cross_frames(max_seconds))
    plan = plan_motion(view.poses, view.eye, n)
    renders = []
    with progress_bar(n, f"rendering {audio.name} at {view.height} px", enabled=progress) as bar:
        for t in range(n):
            renders.append(render_planned_frame(renderer, view, plan, feats, t)["rgb"])
            bar.update(1)
    mesh, ok = mesh_sequence(renders)
    filled = fill_gaps(mesh, ok)
    energy = audio_energy(load_audio(audio, sr=SAMPLE_RATE), SAMPLE_RATE, n, FPS)
    mouth = None if filled is None else mouth_opening(filled)
    out = audio_sync_findings(mouth, energy, f"{CROSS}_{name}",
                              f"a face was meshed in {int(ok.sum())} of {n} renders driven by {audio.name}")
    out.curves[f"cross_energy_{name}"] = energy.tolist()
    if mouth is not None:
        out.curves[f"cross_mouth_render_{name}"] = mouth.tolist()
    return out
