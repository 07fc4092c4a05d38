"""Evaluation of a trained stage on the subject's held-back validation frames (never trained on) and on unrelated
audio: what `python evaluate.py` does. docs/evaluation.md says how each figure is computed."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.subject import read_au45
from ernerf.apps.checkpoints import TrainedStage, audio_extractor
from ernerf.apps.evaluation.figures import (Findings, audio_sync_findings, face_and_sync, fill_gaps, image_findings,
                                            mesh_sequence, mesher_missing, syncnet_reason)
from ernerf.apps.evaluation.frames import Rendered, pose_options, render_subject, resolve_target
from ernerf.apps.evaluation.regions import region_findings
from ernerf.apps.evaluation.report import (EvalResult, build_report, log_metrics, print_summary, run_loggers,
                                           write_outputs)
from ernerf.apps.inference import (Renderer, SubjectView, audio_kind, driving_features, load_subject,
                                  render_planned_frame)
from ernerf.apps.runs import checkpoint_step, stale_warning
from ernerf.constants import FPS, SAMPLE_RATE
from ernerf.errors import ErnerfError
from ernerf.io.atomic import writable_folder
from ernerf.io.audio import load_audio
from ernerf.io.layout import check_subject_name
from ernerf.metrics.lipsync import audio_energy, mouth_opening
from ernerf.metrics.perceptual import lpips_scorer
from ernerf.postprocess.motion import plan_motion
from ernerf.systems.loading import loader_for


def evaluate_from_config(cfg: Any, system_loader: Callable[[Path, str], Renderer] | None = None) -> EvalResult:
    """Everything `python evaluate.py subject=<name> [stage=...|run=...]` does."""
    check_subject_name(cfg.subject)
    target = resolve_target(cfg.paths.runs_root, cfg.subject, cfg.run, cfg.stage_name)
    out_dir = writable_folder(Path(cfg.output) if cfg.output else target.out_dir, "output")
    cross_audio, cross_reason = resolve_cross_audio(cfg.cross_audio)
    if system_loader is None:
        system_loader = loader_for(cfg)  # conf/evaluate.yaml's engine and encoder backend
    renderer = system_loader(target.checkpoint, cfg.device)
    step = checkpoint_step(target.checkpoint) or 0  # now: training may still be rotating its checkpoints
    audio_file = target.trained.feature_file(audio_kind(renderer.hparams)[0])
    rendered, data = render_subject(cfg, renderer, target.trained.stage.background, audio_file)
    found = held_out_findings(cfg, rendered, data)
    regions = region_findings(rendered, data)
    found.merge(regions.found)
    found.merge(cross_findings(cfg, renderer, target.trained, audio_file, cross_audio, cross_reason))
    report = build_report(cfg.subject, target, step, rendered, found, cross_audio)
    report["warnings"] = [w for w in [stale_warning(target.checkpoint.parents[1], cfg.subject)] if w]
    files = write_outputs(out_dir, report, rendered, found, cfg.report_frames, regions)
    report["logged_to"] = log_metrics(run_loggers(target.run_dir, out_dir, cfg.wandb_project), found.values, step)
    files["metrics"].write_text(json.dumps(report, indent=2))
    return EvalResult(out_dir, report, files)


def evaluate_command(cfg: Any) -> EvalResult:
    """What `python evaluate.py` does with its config: evaluate, then print the figures and where they went."""
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
                        downscale=cfg.downscale, **pose_options(cfg))
    each = Findings()
    for name, audio in sources.items():
        each.merge(cross_drive(renderer, trained, view, audio, name, cfg.cross_max_seconds, cfg.audio_extractor))
    values = [each.values[n] for n in names if n in each.values]
    if values:
        found.values[CROSS] = float(np.mean(values))
    else:
        found.skip([CROSS], f"no cross-driving source gave a figure: see {', '.join(names)}")
    return found.merge(each)


def cross_drive(renderer: Renderer, trained: TrainedStage, view: SubjectView, audio: Path, name: str,
                max_seconds: float, extractor_overrides: Any) -> Findings:
    """Render the subject speaking unrelated audio; correlate its mouth opening with that audio's energy.

    The figure is `cross_sync_audio_corr_<name>`, the curves `cross_energy_<name>` and `cross_mouth_render_<name>`."""
    kind, dim = audio_kind(renderer.hparams)
    feats, _ = driving_features(audio, kind, dim, audio_extractor(trained, kind, dim, extractor_overrides))
    n = min(len(feats), max(3, int(max_seconds * FPS)))
    plan = plan_motion(view.poses, view.eye, n)
    renders = [render_planned_frame(renderer, view, plan, feats, t)["rgb"] for t in range(n)]
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
