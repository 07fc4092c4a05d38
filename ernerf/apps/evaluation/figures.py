"""Evaluation of a trained subject on its held-back validation frames (never trained on) and on unrelated audio.

Image figures (PSNR, SSIM, LPIPS, full frame and face box), mouth landmarks (LMD), lip-sync without downloaded
networks (mouth opening vs ground truth and vs audio energy), blink (AU45) and head jitter; metrics.json, the
run's loggers (`test/<name>`) and an HTML report. docs/evaluation.md says how each figure is computed.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ernerf.errors import ErnerfError
from ernerf.apps.inference import Renderer, find_checkpoint, load_system
from ernerf.io.atomic import writable_folder
from ernerf.apps.runs import checkpoint_step, stale_warning

log = logging.getLogger(__name__)

FPS = 25.0
SAMPLE_RATE = 16000
SYNC_LAG = 2  # frames of audio-visual offset forgiven by the lip-sync correlations
MESH_SIZE = 512  # frames are meshed (and LMD measured) at the crop size of preprocessing
MIN_DETECTED = 0.5  # below this share of meshed frames, temporal face figures are not computed
MIN_CURVE = 3  # frames a correlation needs
SSIM_WINDOW = 11  # torchmetrics' Gaussian window: smaller face boxes have no SSIM
REPO = Path(__file__).resolve().parents[3]
DEFAULT_CROSS_AUDIO = "../shared/data/audio/obama_5s.wav"
NOT_COMPARABLE = ("Figures depend on the clip, its resolution, crop and split: compare runs of the same subject, "
                  "not with numbers published on other videos.")


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


# ---------------------------------------------------------------- what to evaluate


@dataclass(frozen=True)
class EvalTarget:
    """The checkpoint to evaluate, where its outputs go, and the run folder whose loggers get the figures."""

    checkpoint: Path
    stage: str
    out_dir: Path
    run_dir: Path | None


def resolve_target(runs_root: Path | str, subject: str, run: str | None, stage: str | None = None) -> EvalTarget:
    """`run=None` -> latest stage's last.ckpt (out: <runs_root>/<subject>/eval); a run folder or a .ckpt file."""
    if run is None:
        stage, ckpt = find_checkpoint(runs_root, subject, stage)
        return EvalTarget(ckpt, stage, Path(runs_root) / subject / "eval", ckpt.parents[1])
    path = Path(run)
    if path.is_dir():
        ckpt = path / "checkpoints" / "last.ckpt"
        if not ckpt.is_file():
            raise ErnerfError(f"run={run} has no checkpoints/last.ckpt: give a finished run folder or a .ckpt file.")
        return EvalTarget(ckpt, path.name, path / "eval", path)
    if path.suffix == ".ckpt" and path.is_file():
        run_dir = path.parents[1] if path.parent.name == "checkpoints" else None
        return EvalTarget(path, run_dir.name if run_dir else path.stem, path.parent / "eval", run_dir)
    raise ErnerfError(f"run={run} is neither a run folder nor an existing .ckpt file: give e.g. "
                      f"run=runs/{subject}/head or run=runs/{subject}/head/checkpoints/last.ckpt.")


def validation_frames(num_train: int, num_frames: int, max_frames: int | None) -> np.ndarray:
    """The held-back frames num_train..num_frames-1, the first `max_frames` of them (kept consecutive). # [T]"""
    frames = np.arange(num_train, num_frames)
    if len(frames) == 0:
        raise ErnerfError("the subject has no validation frames (transforms_val.json is empty): "
                          "re-run the tracking step, which holds back the last 1/11 of the frames.")
    return frames if max_frames is None else frames[:max_frames]


# ---------------------------------------------------------------- rendering


@dataclass(frozen=True)
class Rendered:
    """Renders and ground truth of the evaluated frames, uint8 [T, H, W, 3]; face boxes (top, bottom, left, right)."""

    frames: np.ndarray  # [T] subject frame index
    renders: np.ndarray
    truths: np.ndarray
    face_rects: np.ndarray  # [T, 4]
    seconds: float


def to_uint8(rgb: Any) -> np.ndarray:
    """A [H, W, 3] render in [0, 1] (tensor or array) -> uint8."""
    arr = rgb.detach().float().cpu().numpy() if hasattr(rgb, "detach") else np.asarray(rgb, np.float32)
    return (np.clip(arr, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def render_validation(renderer: Renderer, data: Any, store: Any, frames: np.ndarray) -> Rendered:
    """Render each frame with its tracked pose, audio window and blink, over its own background (as validation)."""
    import torch

    from datamodules.subject import to_unit

    t0, renders, truths = time.perf_counter(), [], []
    intrinsics = torch.tensor(data.intrinsics, dtype=torch.float32)
    for f in frames.tolist():
        out = renderer.render_image(data.poses[f], intrinsics, data.height, data.width, data.audio_window(f),
                                    data.eye[f: f + 1], None, to_unit(store.background(f)))
        renders.append(to_uint8(out["rgb"]))
        truths.append(store.image(f).cpu().numpy())
    return Rendered(frames, np.stack(renders), np.stack(truths), data.rects["face"][frames].numpy(),
                    time.perf_counter() - t0)


# ---------------------------------------------------------------- image figures


def face_crop(img: np.ndarray, rect: Sequence[int]) -> np.ndarray:
    """The face box (top, bottom, left, right) of an image."""
    from ernerf.metrics.image import bbox_crop

    top, bottom, left, right = (int(v) for v in rect)
    return bbox_crop(img, (left, top, right + 1, bottom + 1))


def image_findings(r: Rendered, lpips: Callable[[np.ndarray, np.ndarray], float] | None,
                   lpips_reason: str | None) -> Findings:
    """Per-frame and mean PSNR/SSIM (full frame and face box) and LPIPS."""
    from ernerf.metrics.image import psnr, ssim

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


# ---------------------------------------------------------------- face mesh of frames


def mesh_sequence(images: Iterable[np.ndarray], size: int = MESH_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Face mesh of consecutive RGB frames scaled to `size` px high, tracked as in preprocessing.

    Returns float32 [T, 478, 3] (NaN where no face) in pixels at that size, and bool [T].
    """
    import cv2

    from ernerf.preprocess.mediapipe_face import NUM_MESH_POINTS, FaceMesher

    meshes, valid = [], []
    with FaceMesher(static=False) as mesher:
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
    from ernerf.preprocess.landmarks import interpolate_missing

    if len(valid) == 0 or valid.mean() < MIN_DETECTED:
        return None
    return interpolate_missing(np.nan_to_num(mesh), valid)


# ---------------------------------------------------------------- face figures


LIP_NAMES = ("lmd", "lmd_uncentred", "sync_corr")
BLINK_NAMES = ("blink_corr", "blink_mae")
JITTER_NAMES = ("pose_jitter", "pose_jitter_gt", "pose_jitter_ratio")


def lip_findings(render_mesh: np.ndarray, render_ok: np.ndarray, gt_mesh: np.ndarray, gt_ok: np.ndarray) -> Findings:
    """LMD of the iBUG mouth points (frames where both have a face) and correlation of the mouth openings."""
    from ernerf.metrics.face import mouth_points
    from ernerf.metrics.lipsync import correlation, landmark_distance, mouth_opening

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
    from ernerf.metrics.lipsync import correlation

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
    from ernerf.metrics.face import au45_at_open_level, mean_absolute_error
    from ernerf.metrics.lipsync import correlation
    from ernerf.preprocess.blink import eye_aspect_ratio

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
    from ernerf.metrics.face import STABLE_MESH_POINTS, jitter_valid

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


# ---------------------------------------------------------------- subject side inputs


def subject_energy(audio_path: Path, aud_ids: np.ndarray, num_rows: int) -> tuple[np.ndarray | None, str]:
    """RMS energy of the subject's audio.wav at the evaluated frames' audio rows, or (None, why)."""
    from ernerf.io.audio import load_audio
    from ernerf.metrics.lipsync import audio_energy

    if not audio_path.is_file():
        return None, f"{audio_path} is missing (ingest step): no audio to compare the mouth with"
    energy = audio_energy(load_audio(audio_path, sr=SAMPLE_RATE), SAMPLE_RATE, num_rows, FPS)
    return energy[np.clip(aud_ids, 0, num_rows - 1)], ""


def gt_open_eye_level(mesh_path: Path, valid_path: Path, fallback: np.ndarray | None) -> float | None:
    """The open-eye aspect ratio of the whole clip from mesh.npy (as the blink step), else of `fallback` meshes."""
    from ernerf.metrics.face import open_eye_level
    from ernerf.preprocess.blink import eye_aspect_ratio

    if mesh_path.is_file():
        mesh = np.load(mesh_path, mmap_mode="r")
        valid = np.load(valid_path) if valid_path.is_file() else np.ones(len(mesh), bool)
        return open_eye_level(eye_aspect_ratio(np.asarray(mesh[valid])))
    return None if fallback is None else open_eye_level(eye_aspect_ratio(fallback))


# ---------------------------------------------------------------- cross-driving


def resolve_cross_audio(value: str | None) -> tuple[Path | None, str]:
    """The cross-driving audio (relative paths from the repo), or (None, why not); a missing explicit file raises."""
    if value is None:
        return None, "cross_audio=null"
    path = Path(value) if Path(value).is_absolute() else (REPO / value).resolve()
    if path.is_file():
        return path, ""
    if Path(value).is_file():
        return Path(value), ""
    if value == DEFAULT_CROSS_AUDIO:
        return None, f"the default cross-driving clip {path} is not here: give cross_audio=<an unrelated speech file>"
    raise ErnerfError(f"cross_audio={value} not found: give an existing audio file, or cross_audio=null.")


def cross_drive(renderer: Renderer, view: Any, audio: Path, max_seconds: float, extractor_overrides: Any) -> Findings:
    """Render the subject speaking unrelated audio; correlate its mouth opening with that audio's energy."""
    from ernerf.apps.inference import audio_kind, driving_features, extractor_for, render_frame
    from ernerf.io.audio import load_audio
    from ernerf.metrics.lipsync import audio_energy, mouth_opening
    from ernerf.postprocess.motion import plan_motion

    kind, dim = audio_kind(renderer.hparams)
    feats, _ = driving_features(audio, kind, dim, extractor_for(kind, extractor_overrides))
    n = min(len(feats), max(3, int(max_seconds * FPS)))
    plan = plan_motion(view.poses, view.eye, n)
    renders = [render_frame(renderer, view, plan, feats, t)["rgb"] for t in range(n)]
    mesh, ok = mesh_sequence(renders)
    filled = fill_gaps(mesh, ok)
    energy = audio_energy(load_audio(audio, sr=SAMPLE_RATE), SAMPLE_RATE, n, FPS)
    mouth = None if filled is None else mouth_opening(filled)
    out = audio_sync_findings(mouth, energy, "cross_sync_audio_corr",
                              f"a face was meshed in {int(ok.sum())} of {n} cross-driven renders")
    out.curves["cross_energy"] = energy.tolist()
    if mouth is not None:
        out.curves["cross_mouth_render"] = mouth.tolist()
    return out


# ---------------------------------------------------------------- loggers of the run


def run_loggers(run_dir: Path | None, out_dir: Path, wandb_project: str = "ernerf") -> list[Any]:
    """Lightning loggers writing into the run's own TensorBoard / CSV / W&B (offline) records; else a CSV in out_dir."""
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from ernerf.loggers import AppendingCSVLogger

    loggers: list[Any] = []
    if run_dir is not None and (run_dir / "tensorboard").is_dir():
        loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="", default_hp_metric=False))
    if run_dir is not None and (run_dir / "csv").is_dir():  # its own version, kept apart from the training's rows
        loggers.append(AppendingCSVLogger(save_dir=str(run_dir), name="csv", version="test"))
    runs = sorted((run_dir / "wandb").glob("*run-*-*")) if run_dir is not None and (run_dir / "wandb").is_dir() else []
    if runs:
        from lightning.pytorch.loggers import WandbLogger

        run_id = runs[-1].name.rsplit("-", 1)[1]
        loggers.append(WandbLogger(project=wandb_project, id=run_id, resume="allow", offline=True, save_dir=str(run_dir)))
    return loggers or [CSVLogger(save_dir=str(out_dir), name="csv", version="")]


def log_metrics(loggers: list[Any], values: dict[str, float], step: int) -> list[str]:
    """Log `test/<name>` to every logger; return where they went (or why a logger failed)."""
    metrics = {f"test/{k}": float(v) for k, v in values.items() if math.isfinite(v)}
    places = []
    for logger in loggers:
        where = f"{type(logger).__name__}: {getattr(logger, 'log_dir', None) or logger.save_dir}"
        try:
            logger.log_metrics(metrics, step=step)
            logger.finalize("success")
            if type(logger).__name__ == "WandbLogger":
                logger.experiment.finish()  # flush the offline run now, not at interpreter exit
        except Exception as exc:  # noqa: BLE001 - a logger is a side channel: metrics.json is already written
            log.warning("could not log to %s: %s", where, exc)
            where += f" (failed: {exc})"
        places.append(where)
    return places


# ---------------------------------------------------------------- from the Hydra config (evaluate.py)


@dataclass
class EvalResult:
    """Where the evaluation wrote its outputs, and the metrics.json content."""

    out_dir: Path
    report: dict[str, Any]
    files: dict[str, Path]


def evaluate_from_config(cfg: Any, system_loader: Callable[[Path, str], Renderer] = load_system) -> EvalResult:
    """Everything `python evaluate.py subject=<name> [run=...]` does."""
    from ernerf.apps.inference import audio_kind
    from ernerf.io.layout import check_subject_name

    check_subject_name(cfg.subject)
    target = resolve_target(cfg.paths.runs_root, cfg.subject, cfg.run, cfg.stage)
    out_dir = writable_folder(Path(cfg.output) if cfg.output else target.out_dir, "output")
    cross_audio, cross_reason = resolve_cross_audio(cfg.cross_audio)
    renderer = system_loader(target.checkpoint, cfg.device)
    step = checkpoint_step(target.checkpoint) or 0  # now: training may still be rotating its checkpoints
    audio_file = f"aud_{audio_kind(renderer.hparams)[0]}.npy"
    rendered, data = render_subject(cfg, renderer, target.stage, audio_file)
    found = held_out_findings(cfg, rendered, data)
    found.merge(cross_findings(cfg, renderer, target.stage, audio_file, cross_audio, cross_reason))
    report = build_report(cfg.subject, target, step, rendered, found, cross_audio)
    report["warnings"] = [w for w in [stale_warning(target.checkpoint.parents[1], cfg.subject)] if w]
    files = write_outputs(out_dir, report, rendered, found, cfg.report_frames)
    report["logged_to"] = log_metrics(run_loggers(target.run_dir, out_dir, cfg.wandb_project), found.values, step)
    files["metrics"].write_text(json.dumps(report, indent=2))
    return EvalResult(out_dir, report, files)


def _pose(cfg: Any) -> dict[str, Any]:
    return {"scale": cfg.pose.scale, "offset": tuple(cfg.pose.offset)}


def render_subject(cfg: Any, renderer: Renderer, stage: str, audio_file: str) -> tuple[Rendered, Any]:
    """Parse the subject as training does and render its validation frames; -> (rendered, SubjectData)."""
    from datamodules.subject import FrameStore, parse_subject

    data = parse_subject(Path(cfg.paths.data_root) / cfg.subject, audio_file, downscale=cfg.downscale, **_pose(cfg))
    plate = stage.startswith("torso") or not data.layout.torso_dir.exists()
    store = FrameStore(data, background="plate" if plate else "torso")
    frames = validation_frames(data.num_train, data.num_frames, cfg.max_frames)
    log.info("rendering %d validation frames of %s", len(frames), cfg.subject)
    return render_validation(renderer, data, store, frames), data


def held_out_findings(cfg: Any, rendered: Rendered, data: Any) -> Findings:
    """Image, face, sync, blink and jitter figures of the validation frames; SyncNet's reason."""
    from datamodules.subject import read_au45
    from ernerf.metrics.perceptual import lpips_scorer

    lpips, lpips_reason = lpips_scorer(cfg.lpips.net, cfg.lpips.weights)
    found = image_findings(rendered, lpips, lpips_reason)
    found.merge(face_and_sync(rendered, data, read_au45(data.layout.au)))
    found.skip(["syncnet_conf"], syncnet_reason(cfg.syncnet_weights))
    return found


def cross_findings(cfg: Any, renderer: Renderer, stage: str, audio_file: str, audio: Path | None,
                   reason: str) -> Findings:
    """The cross-driving figure, or why it is unavailable."""
    from ernerf.apps.inference import load_subject

    reason = reason if audio is None else (mesher_missing() or "")
    if reason:
        found = Findings()
        found.skip(["cross_sync_audio_corr"], reason)
        return found
    view = load_subject(Path(cfg.paths.data_root) / cfg.subject, audio_file, stage, downscale=cfg.downscale,
                        **_pose(cfg))
    return cross_drive(renderer, view, audio, cfg.cross_max_seconds, cfg.audio_extractor)


def mesher_missing() -> str | None:
    """Why the face mesh cannot run here (mediapipe or OpenCV not installed), or None."""
    import importlib.util

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
    found.merge(audio_sync_findings(None if filled_r is None else _mouth(filled_r), energy, "sync_audio_corr",
                                    reason or no_face.format("rendered")))
    found.merge(audio_sync_findings(None if filled_g is None else _mouth(filled_g), energy, "sync_audio_corr_gt",
                                    reason or no_face.format("ground-truth")))
    if energy is not None:
        found.curves["energy"] = energy.tolist()
    img_ids = data.img_ids[rendered.frames].numpy()
    au_gt = au45[np.minimum(img_ids, len(au45) - 1)]
    open_level = gt_open_eye_level(data.layout.mesh, data.layout.mesh_valid, filled_g)
    found.merge(blink_findings(filled_r if open_level is not None else None, au_gt, open_level or 0.0))
    found.merge(jitter_findings(render_mesh, render_ok, gt_mesh, gt_ok))
    return found


def _mouth(mesh: np.ndarray) -> np.ndarray:
    from ernerf.metrics.lipsync import mouth_opening

    return mouth_opening(mesh)


def syncnet_reason(weights: str | None) -> str:
    """Why SyncNet confidence is not reported."""
    if not weights:
        return "no SyncNet weights given (syncnet_weights=<path>); mouth-vs-audio correlations are reported instead"
    return f"syncnet_weights={weights} was given but this version has no SyncNet scorer; use the correlations"


def build_report(subject: str, target: EvalTarget, step: int, rendered: Rendered, found: Findings,
                 cross_audio: Path | None) -> dict[str, Any]:
    """The content of metrics.json."""
    names = list(found.values) + [n for n in found.unavailable if n not in found.values]
    return {
        "subject": subject, "checkpoint": str(target.checkpoint), "stage": target.stage, "step": step,
        "frames": {"validation": rendered.frames.tolist(), "height": int(rendered.renders.shape[1]),
                   "width": int(rendered.renders.shape[2]), "render_seconds": round(rendered.seconds, 2)},
        "metrics": {n: found.values.get(n, "unavailable") for n in names},
        "unavailable": found.unavailable,
        "per_frame": found.curves,
        "cross_audio": None if cross_audio is None else str(cross_audio),
        "logged_to": [], "logger_keys": "test/<metric>", "note": NOT_COMPARABLE,
    }


def write_outputs(out_dir: Path, report: dict[str, Any], rendered: Rendered, found: Findings,
                  report_frames: int) -> dict[str, Path]:
    """metrics.json, the PNG figures and index.html."""
    from ernerf.metrics import report as figures

    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"metrics": out_dir / "metrics.json"}
    files["metrics"].write_text(json.dumps(report, indent=2))
    picks = np.linspace(0, len(rendered.frames) - 1, min(report_frames, len(rendered.frames))).round().astype(int)
    files["grid"] = figures.frame_grid(out_dir / "frames.png", rendered.truths[picks], rendered.renders[picks],
                                       rendered.frames[picks])
    files["psnr"] = figures.psnr_curve(out_dir / "psnr.png", rendered.frames, found.curves["psnr"])
    files["mouth"] = figures.mouth_curves(out_dir / "mouth.png", rendered.frames, found.curves)
    files["html"] = figures.write_index(out_dir / "index.html", report, [files["grid"], files["psnr"], files["mouth"]])
    return files
