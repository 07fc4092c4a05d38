"""Inference: new audio + a trained subject -> result.mp4 (render crops, paste back into the original frames, mux).

The renderer is anything with `render_image(...)` (docs/design/model_api.md); tests inject a fake one.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
import torch
from rich.console import Console

from datamodules.subject import FrameStore, SubjectData, parse_subject
from ernerf.apps.checkpoints import audio_extractor
# infer.py checks its options before it imports this module (ernerf/apps/preflight.py)
from ernerf.apps.preflight import plan_inference
from ernerf.apps.runs import stale_warning
from ernerf.apps.tts import SpeechEngine, speak_to_wav
from ernerf.audio.features import extract_features, smoothing_rows
from ernerf.constants import FPS, SAMPLE_RATE, SMOOTH_WINDOW
from ernerf.errors import ErnerfError, instantiate_config
from ernerf.io.audio import load_audio, loudness_db
from ernerf.io.layout import SubjectLayout
from ernerf.postprocess.motion import MotionPlan, plan_motion
from ernerf.postprocess.depth import colorize_depth, depth_range
from ernerf.postprocess.mux import ResultWriter
from ernerf.postprocess.pasteback import HeadBox, PaletteMap, PasteBack, read_parsing_map
from ernerf.postprocess.pipeline import Lookahead, OrderedSink, paste_workers, thread_pool
from ernerf.preprocess.check import redo_hint
from ernerf.progress import Enabled, progress_bar
from ernerf.systems.execution import LaunchedRender, to_device
from ernerf.systems.loading import loader_for

MIN_AUDIO_SECONDS = 0.5  # below this the audio net sees less than its 8-frame (0.32 s) window of real sound
SILENCE_DB = -60.0  # speech is -30..-15 dBFS; below -60 dBFS the mouth stays closed


class Renderer(Protocol):
    """What inference needs of a trained system (TalkingHeadSystem implements it)."""

    device: Any  # torch.device the inputs go to
    hparams: Mapping[str, Any]  # carries the audio feature kind and width

    def render_image(self, c2w: Any, intrinsics: Any, H: int, W: int, audio_window: Any, eye: Any,
                     frame_index: int | None, bg: Any, torso_frame: int | None = None) -> Mapping[str, Any]:
        ...


class LaunchingRenderer(Renderer, Protocol):
    """A renderer that can also queue a frame on its device without waiting for it (TalkingHeadSystem does)."""

    def launch_image(self, c2w: Any, intrinsics: Any, H: int, W: int, audio_window: Any, eye: Any,
                     frame_index: int | None, bg: Any, torso_frame: int | None = None) -> LaunchedRender:
        ...


class BatchRenderer(Renderer, Protocol):
    """A renderer that also renders several frames of new audio in one call (`render_crops` of more than one)."""

    def render_images(self, c2w: Any, intrinsics: Any, H: int, W: int, audio_windows: Any, eyes: Any,
                      bg: Any, torso_frames: Any = None) -> Mapping[str, Any]:
        ...


# ---------------------------------------------------------------- audio


def audio_kind(hparams: Mapping[str, Any]) -> tuple[str, int]:
    """(kind, feature_dim) of the audio features a checkpoint was trained with, from its hparams."""
    try:
        return str(hparams["audio_kind"]), int(hparams["feature_dim"])
    except (KeyError, TypeError) as exc:
        raise ErnerfError("the checkpoint does not record its audio features (hparams audio_kind, feature_dim): "
                          "retrain it with this version of train.py.") from exc


def load_driving_audio(path: Path | str, min_seconds: float = MIN_AUDIO_SECONDS) -> tuple[np.ndarray, list[str]]:
    """Decode any audio file to 16 kHz mono; reject too-short audio, warn on silence. -> (wav [T], warnings)"""
    wav = load_audio(path, sr=SAMPLE_RATE)
    seconds = len(wav) / SAMPLE_RATE
    if seconds < min_seconds:
        raise ErnerfError(f"the audio {path} lasts {seconds:.2f} s; inference needs at least {min_seconds:.1f} s "
                          "of speech. Give a longer audio file.")
    level = loudness_db(wav)
    warnings = []
    if level < SILENCE_DB:
        warnings.append(f"the audio {path} is silent ({level:.0f} dBFS): the avatar will keep its mouth closed.")
    return wav, warnings


def check_kind(requested: str | None, trained: str) -> None:
    """Raise if the user asked for a feature kind other than the one the checkpoint was trained with."""
    if requested is not None and requested != trained:
        raise ErnerfError(f"audio_kind={requested} was requested but the checkpoint was trained on '{trained}' "
                          f"features: drop the override (or use audio_kind={trained}), or retrain with "
                          f"audio_features=<the kind you want>.")


def load_feature_file(path: Path, kind: str, feature_dim: int) -> np.ndarray:
    """Precomputed features `aud_<kind>.npy` [N, 16, C]; their width must match the checkpoint's."""
    feats = np.load(path)
    if feats.ndim != 3 or feats.shape[1] != 16:
        raise ErnerfError(f"{path} has shape {feats.shape}, expected [frames, 16, C] audio windows: "
                          "leave features= out and they are computed from the audio.")
    if feats.shape[2] != feature_dim:
        raise ErnerfError(f"{path} holds {feats.shape[2]}-wide features but the checkpoint was trained on "
                          f"'{kind}' features of width {feature_dim}: leave features= out, or give aud_{kind}.npy.")
    return feats.astype(np.float32)


def driving_features(audio: Path | str, kind: str, feature_dim: int, extractor: Any,
                     features_file: Path | str | None = None) -> tuple[np.ndarray, list[str]]:
    """Per-frame audio windows [N, 16, C] for the driving audio, of the kind the checkpoint expects.

    `features_file` (precomputed `aud_<kind>.npy` of this audio) skips the extractor.
    """
    path = Path(audio)
    wav, warnings = load_driving_audio(path)
    num_frames = int(round(len(wav) / SAMPLE_RATE * FPS))
    if features_file is not None:
        return load_feature_file(Path(features_file), kind, feature_dim)[:num_frames], warnings
    feats = extract_features(path, extractor, num_frames=num_frames, fps=FPS)
    if feats.shape[-1] != feature_dim:
        raise ErnerfError(f"the {kind} extractor gives {feats.shape[-1]}-wide features but the checkpoint expects "
                          f"{feature_dim}: point the extractor at the model the subject was trained with.")
    return feats, warnings


def audio_window(feats: np.ndarray, frame: int, size: int = SMOOTH_WINDOW) -> np.ndarray:
    """Windows of the `size` frames around `frame` [size, 16, C], the first and last windows repeated beyond the
    audio's ends, as training pads its clip (`smoothing_rows`)."""
    return feats[smoothing_rows(frame, len(feats), size)]


# ---------------------------------------------------------------- original frames


class FrameSource:
    """Random access to the original frames of input_temp.mp4, decoding blocks (ping-pong walks back too). Safe to
    call from several threads: one decodes at a time, and `close` waits for it."""

    def __init__(self, video: Path, block: int = 16, keep: int = 3) -> None:
        if not Path(video).is_file():
            raise ErnerfError(f"{video} is missing: {redo_hint(video)}.")
        self.video, self.block, self.keep = Path(video), block, keep
        self._cap = cv2.VideoCapture(str(video))
        self._next = 0  # frame the capture decodes next
        self._cache: OrderedDict[int, list[np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()
        self._closed = False

    def get(self, index: int) -> np.ndarray:
        """RGB uint8 frame [H, W, 3] number `index`."""
        with self._lock:
            if self._closed:
                raise ErnerfError(f"{self.video}: its decoder was closed")
            return self._get(index)

    def _get(self, index: int) -> np.ndarray:
        b = index // self.block
        if b not in self._cache:
            # walking back, the blocks before b come next: decode them after the same seek (a seek decodes from the
            # keyframe before it, up to 250 frames with x264's defaults, so a seek per block cost up to 9x a block)
            first = b if b * self.block >= self._next else max(0, b - self.keep + 1)
            for k in range(first, b + 1):
                self._cache[k] = self._decode(k)
                self._cache.move_to_end(k)
            while len(self._cache) > self.keep:
                self._cache.popitem(last=False)
        self._cache.move_to_end(b)
        frames = self._cache[b]
        if index - b * self.block >= len(frames):
            raise ErnerfError(f"{self.video} has fewer frames than its subject ({index + 1} needed): "
                              f"{redo_hint(self.video)}.")
        return frames[index - b * self.block]

    def _decode(self, b: int) -> list[np.ndarray]:
        start = b * self.block
        if start != self._next:
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, start)
        frames = []
        for _ in range(self.block):
            ok, bgr = self._cap.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        self._next = start + len(frames)
        return frames

    def close(self) -> None:
        """Release the decoder."""
        with self._lock:
            self._closed = True
            self._cap.release()
            self._cache.clear()


# ---------------------------------------------------------------- the subject as inference sees it


@dataclass(frozen=True)
class SubjectView:
    """Per-training-frame inputs of a subject: poses (model space), intrinsics, blink, backgrounds, masks."""

    layout: SubjectLayout
    poses: np.ndarray  # [N, 4, 4] camera-to-world in the model's space
    intrinsics: tuple[float, float, float, float]  # fx, fy, cx, cy at height x width
    height: int
    width: int
    eye: np.ndarray | None  # [N] blink in [0, 1]
    img_ids: np.ndarray  # [N] file index of each training frame (= frame of input_temp.mp4)
    background: Callable[[int], np.ndarray]  # training frame -> bg uint8 [H, W, 3]
    num_train: int | None = None  # frames 0 .. num_train-1 were trained on (None: all), the rest held out
    num_coded: int | None = None  # frames 0 .. num_coded-1 have a torso code: trained on, or fitted (None: num_train)
    store: FrameStore | None = None  # the frames as training reads them (ground truth, backgrounds)

    def coded_frame(self, index: int) -> int | None:
        """`index` where the model has that frame's own torso code (trained on it, or fitted to it:
        `with_held_out_codes`), else None: a walk through the frames also passes the held-out ones."""
        coded = self.num_train if self.num_coded is None else self.num_coded
        return index if coded is None or index < coded else None

    def face_points(self, img_id: int) -> np.ndarray | None:
        """Face-mesh points [478, 2] (68 landmarks if no mesh) of a frame in crop pixels, or None."""
        if self.layout.mesh.is_file():
            return np.load(self.layout.mesh, mmap_mode="r")[img_id, :, :2].astype(np.float32)
        if self.layout.lms(img_id).is_file():
            return np.loadtxt(self.layout.lms(img_id)).astype(np.float32)
        return None

    def parsing(self, img_id: int) -> PaletteMap | np.ndarray | None:
        """Parsing map of a frame as PasteBack takes it (`read_parsing_map`), or None."""
        path = self.layout.parsing(img_id)
        return read_parsing_map(path) if path.is_file() else None


def frame_store(data: SubjectData, background: str) -> FrameStore:
    """The subject's frames over a stage's background ("torso" or "plate"); without torso images, the plate."""
    return FrameStore(data, background=background if data.layout.torso_dir.exists() else "plate")


def load_subject(root: Path | str, audio_file: str, background: str = "torso", scale: float = 4.0,
                 offset: tuple[float, float, float] = (0.0, 0.0, 0.0), downscale: int = 1,
                 cache_frames: int = 64) -> SubjectView:
    """Parse a subject folder with the training datamodule's parser, its frames over the trained stage's
    `background`; `downscale` renders smaller crops. The backgrounds of the last `cache_frames` frames asked for stay
    in memory: a ping-pong walk comes back through the frames it passed last (`postprocess.cache_frames`)."""
    check_cache_frames(cache_frames)
    data = parse_subject(Path(root), audio_file, downscale=downscale, scale=scale, offset=tuple(offset))
    store = frame_store(data, background)

    @functools.lru_cache(maxsize=cache_frames)  # compositing torso over the plate is not free
    def frame_background(i: int) -> np.ndarray:
        return store.background(i).cpu().numpy()

    return SubjectView(
        layout=data.layout, poses=data.poses.numpy(), intrinsics=data.intrinsics, height=data.height,
        width=data.width, eye=data.eye.numpy(), img_ids=data.img_ids.numpy(), background=frame_background,
        num_train=data.num_train, store=store,
    )


def check_cache_frames(value: Any) -> None:
    """A whole number of frames >= 0; else a one-line error naming the setting."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ErnerfError(f"postprocess.cache_frames must be a whole number of frames >= 0 (0: keep none), got {value!r}.")


def with_held_out_codes(subject: SubjectView, system: Any, checkpoint: Path, last_frame: int,
                        progress: Enabled = "auto") -> SubjectView:
    """The subject with torso codes of its own for the held-out frames up to `last_frame` that a walk pastes into,
    fitted to their images with a torso-stage `system` (ernerf/apps/torso_fit.py) and kept in the run folder for the
    next call; unchanged for a model without a torso field or a walk that stays on the training frames."""
    if getattr(system, "torso", None) is None or subject.store is None or last_frame < (subject.num_train or 0):
        return subject
    from ernerf.apps.torso_fit import held_out_codes

    cache = Path(checkpoint).parents[1] / "fitted_torso_codes.pt"
    coded = held_out_codes(system, subject.store, last_frame, checkpoint, cache, progress=progress)
    return dataclasses.replace(subject, num_coded=coded)


# ---------------------------------------------------------------- render loop


@dataclass(frozen=True)
class OutputOptions:
    """What to write besides result.mp4, and how to paste."""

    paste: PasteBack
    alpha: str | None = None  # "webm" | "png" | None
    depth: bool = False
    crf: int = 18
    workers: int | str = "auto"  # paste-back threads (ernerf.postprocess.pipeline.paste_workers)
    cache_frames: int = 64  # paste masks kept in memory, the last frames' (a ping-pong walk comes back through them)

    @property
    def rendered(self) -> tuple[str, ...]:
        """The renderer's outputs these options use (only those are copied back from its device)."""
        return ("rgb", *(("depth",) if self.depth else ()), *(("opacity",) if self.alpha is not None else ()))


@dataclass
class InferenceResult:
    """Where the outputs went and how long each part took."""

    outputs: dict[str, Path]
    num_frames: int
    seconds_total: float
    seconds_render: float
    warnings: list[str] = field(default_factory=list)
    stage: str | None = None
    checkpoint: Path | None = None

    @property
    def render_fps(self) -> float:
        return self.num_frames / max(self.seconds_render, 1e-9)

    @property
    def seconds_per_output_second(self) -> float:
        return self.seconds_total / (self.num_frames / FPS)


def _to_numpy(x: Any) -> np.ndarray:
    return x.detach().float().cpu().numpy() if hasattr(x, "detach") else np.asarray(x, dtype=np.float32)


RENDERED = ("rgb", "depth", "opacity")  # what a render gives: colours (as uint8 pixels), depth and opacity


def _to_host(out: Mapping[str, Any], outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The renderer's `outputs` as numpy: rgb as uint8 pixels, the others float32."""
    return {name: _to_pixels(out[name]) if name == "rgb" else _to_numpy(out[name]) for name in outputs}


def _to_pixels(rgb: Any) -> np.ndarray:
    """Rendered colours in [0, 1] as uint8 pixels [..., 3], rounded on the renderer's device so that a quarter of
    the bytes come back (the same float32 operations as numpy's `(clip(x, 0, 1) * 255 + 0.5).astype(uint8)`)."""
    if not hasattr(rgb, "detach"):
        return (np.clip(np.asarray(rgb, np.float32), 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    return _device_pixels(rgb).cpu().numpy()


def _device_pixels(rgb: torch.Tensor) -> torch.Tensor:
    return rgb.detach().float().clamp(0.0, 1.0).mul(255).add(0.5).to(torch.uint8)


# uint8 -> float32 in [0, 1] as numpy computes it (`x.astype(float32) / 255`): a device division by a scalar may
# multiply by its reciprocal instead, which rounds differently
_UNIT_LEVELS = np.arange(256, dtype=np.float32) / 255.0
_unit_levels_on: dict[torch.device, torch.Tensor] = {}


def _device_background(bg: np.ndarray, device: Any) -> torch.Tensor:
    """A background [..., H, W, 3] (uint8, or float32 in [0, 1]) as the renderer takes it: float32 on `device`, sent
    as uint8 (a quarter of the bytes) and turned into levels there."""
    if bg.dtype != np.uint8:
        return to_device(torch.from_numpy(np.asarray(bg, np.float32)), device)
    device = torch.device(device)
    levels = _unit_levels_on.get(device)
    if levels is None:
        levels = _unit_levels_on[device] = torch.from_numpy(_UNIT_LEVELS).to(device)
    return levels[to_device(torch.from_numpy(bg), device).long()]


def render_background(subject: SubjectView, i: int) -> np.ndarray:
    """Background of training frame i: uint8 [H, W, 3] (render_crop sends it to the renderer as [0, 1] floats)."""
    return subject.background(i)


def render_planned_frame(renderer: Renderer, subject: SubjectView, plan: MotionPlan, feats: np.ndarray,
                 t: int) -> dict[str, np.ndarray]:
    """Render output frame t: rgb uint8 [H,W,3], depth and opacity float [H,W]."""
    bg = render_background(subject, int(plan.indices[t]))
    return render_crops(renderer, subject, [planned_request(subject, plan, feats, t, bg)])[0]


def planned_request(subject: SubjectView, plan: MotionPlan, feats: np.ndarray, t: int, bg: np.ndarray) -> CropRequest:
    """Output frame t's crop: the plan's pose and blink, the audio window of frame t, pasted into the plan's frame."""
    eye = None if plan.eye is None else float(plan.eye[t])
    return CropRequest(plan.poses[t], eye, audio_window(feats, t), bg, frame=subject.coded_frame(int(plan.indices[t])))


class RenderedAhead:
    """The frames of a motion plan rendered on the calling thread, each handed out once the next one is launched:
    the device renders frame t + 1 while the caller pastes frame t (`launch_crops`). `seconds`: the time spent
    launching and waiting for them."""

    def __init__(self, renderer: Renderer, subject: SubjectView, plan: MotionPlan, feats: np.ndarray,
                 outputs: tuple[str, ...] = RENDERED) -> None:
        self.renderer, self.subject, self.plan, self.feats, self.outputs = renderer, subject, plan, feats, outputs
        self.seconds = 0.0

    def frames(self, backgrounds: Iterator[np.ndarray]) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """(t, rgb uint8 and depth / opacity float arrays, those in `outputs`) for t = 0 .. n - 1, in order; frame
        t's background is the next of `backgrounds`, taken when frame t is launched."""
        pending: tuple[int, LaunchedCrop | RenderedCrops] | None = None
        for t in range(len(self.feats)):
            bg = next(backgrounds)
            start = time.perf_counter()
            launched = self._launch(t, bg)
            self.seconds += time.perf_counter() - start
            if pending is not None:
                yield pending[0], self._result(pending[1])
            pending = (t, launched)
        if pending is not None:
            yield pending[0], self._result(pending[1])

    def _launch(self, t: int, bg: np.ndarray) -> LaunchedCrop | RenderedCrops:
        request = planned_request(self.subject, self.plan, self.feats, t, bg)
        return launch_crops(self.renderer, self.subject, [request], self.outputs)

    def _result(self, launched: LaunchedCrop | RenderedCrops) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        raw = launched.result()[0]
        self.seconds += time.perf_counter() - start
        return raw


def render_crop(renderer: Renderer, subject: SubjectView, pose: np.ndarray, eye: float | None, window: np.ndarray,
                bg: np.ndarray, outputs: tuple[str, ...] = RENDERED, frame: int | None = None) -> dict[str, np.ndarray]:
    """One head crop from a pose [4, 4], a blink value, an audio window [8, 16, C] and a background [H, W, 3] (uint8,
    or float32 in [0, 1]): rgb uint8 [H, W, 3], depth and opacity float32 [H, W], those named in `outputs`.

    `frame`: the frame the crop is pasted into (its pose, its blink) where it has a torso code of its own, else None
    (`SubjectView.coded_frame`). A torso field then draws that frame's torso (its per-frame code): new audio moves
    the mouth, not where the body sat, and a torso drawn where the frame has it meets the frame's own at the paste's
    edge (docs/evaluation.md, "The torso code of the frame pasted into"). The head's codes stay the mean ones, as for
    any new audio."""
    with torch.no_grad():
        out = renderer.render_image(*_crop_inputs(renderer, subject, pose, eye, window, bg), torso_frame=frame)
    return _to_host(out, outputs)


def _crop_inputs(renderer: Renderer, subject: SubjectView, pose: np.ndarray, eye: float | None, window: np.ndarray,
                 bg: np.ndarray) -> tuple:
    """`render_image`'s positional arguments (the order of docs/design/model_api.md) for one crop, on the device."""
    dev = renderer.device
    eye_t = None if eye is None else to_device(torch.tensor([eye]), dev)
    # intrinsics as numbers (a device tensor costs the renderer 4 reads back), rounded to float32 as a tensor was
    intrinsics = tuple(float(v) for v in np.asarray(subject.intrinsics, dtype=np.float32))
    return (to_device(torch.from_numpy(np.asarray(pose, np.float32)), dev), intrinsics, subject.height, subject.width,
            to_device(torch.from_numpy(np.asarray(window, np.float32)), dev), eye_t, None, _device_background(bg, dev))


@dataclass(frozen=True)
class CropRequest:
    """What one head crop of new audio is rendered from: a pose [4, 4], a blink value (or None), an audio window
    [8, 16, C], a background [H, W, 3] (uint8, or float32 in [0, 1]) and the training frame it is pasted into (or
    None: `render_crop`'s `frame`)."""

    pose: np.ndarray
    eye: float | None
    window: np.ndarray
    bg: np.ndarray
    frame: int | None = None


def render_crops(renderer: Renderer | BatchRenderer, subject: SubjectView, requests: list[CropRequest],
                 outputs: tuple[str, ...] = RENDERED) -> list[dict[str, np.ndarray]]:
    """Head crops of several frames, as `render_crop` renders each: one alone goes through `render_crop` itself,
    more in one `render_images` call of the renderer (equal to one at a time up to float summation order)."""
    if len(requests) == 1:
        r = requests[0]
        return [render_crop(renderer, subject, r.pose, r.eye, r.window, r.bg, outputs, r.frame)]
    dev, eyes = renderer.device, [r.eye for r in requests]
    intrinsics = tuple(float(v) for v in np.asarray(subject.intrinsics, dtype=np.float32))  # as render_crop
    with torch.no_grad():
        out = renderer.render_images(
            _stacked([r.pose for r in requests], dev), intrinsics, subject.height, subject.width,
            _stacked([r.window for r in requests], dev), None if None in eyes else _stacked(eyes, dev),
            _device_background(np.stack([r.bg for r in requests]), dev),
            # a batch takes each frame's own torso code or, where one of its frames has none, the mean code for all
            torso_frames=None if any(r.frame is None for r in requests) else [r.frame for r in requests])
    arrays = _to_host(out, outputs)
    return [{name: value[b] for name, value in arrays.items()} for b in range(len(requests))]


def _stacked(values: list[Any], device: Any) -> torch.Tensor:
    """Arrays of one shape as one float32 tensor [B, ...] on `device`."""
    return to_device(torch.from_numpy(np.stack([np.asarray(v, np.float32) for v in values])), device)


class RenderedCrops:
    """Head crops already on the host, as `LaunchedCrop` gives one once it is ready."""

    def __init__(self, crops: list[dict[str, np.ndarray]]) -> None:
        self.crops = crops

    def result(self) -> list[dict[str, np.ndarray]]:
        return self.crops


class LaunchedCrop:
    """One head crop launched on the renderer's device with its copy back to the host queued behind it, so the caller
    can prepare the next frame while it renders; `result()` waits for the copy, and renders the frame again where
    its graph fell short of samples (`LaunchedRender`)."""

    def __init__(self, launched: LaunchedRender, outputs: tuple[str, ...]) -> None:
        self.launched, self.outputs = launched, outputs
        out = launched.outputs
        self.host = {name: (_device_pixels(out[name]) if name == "rgb" else out[name].detach().float()).to(
            "cpu", non_blocking=True) for name in outputs}  # page-locked host tensors, filled by the device
        self.short = None if launched.short is None else launched.short.to("cpu", non_blocking=True)
        device = out[outputs[0]].device
        self.copied = torch.cuda.Event() if device.type == "cuda" else None
        if self.copied is not None:
            self.copied.record(torch.cuda.current_stream(device))

    def result(self) -> list[dict[str, np.ndarray]]:
        if self.copied is not None:
            self.copied.synchronize()
        if self.short is not None and bool(self.short):
            return [_to_host(self.launched.redo(), self.outputs)]
        return [{name: value.numpy() for name, value in self.host.items()}]


def launch_crops(renderer: Renderer, subject: SubjectView, requests: list[CropRequest],
                 outputs: tuple[str, ...] = RENDERED) -> LaunchedCrop | RenderedCrops:
    """`render_crops`, but one crop of a renderer that can launch frames (`LaunchingRenderer`) is only launched: its
    `result()` is read after the caller has launched or prepared the next, so the device is not left idle between
    frames (engine.render_async). Several crops render together and come back at once, as `render_crops`."""
    if len(requests) != 1 or not hasattr(renderer, "launch_image"):
        return RenderedCrops(render_crops(renderer, subject, requests, outputs))
    r = requests[0]
    with torch.no_grad():
        launched = renderer.launch_image(*_crop_inputs(renderer, subject, r.pose, r.eye, r.window, r.bg),
                                         torso_frame=r.frame)
    return LaunchedCrop(launched, outputs)


class Compositor:
    """Pastes rendered crops into original frames (alpha masks cached per frame); called from several threads."""

    def __init__(self, subject: SubjectView, box: HeadBox, options: OutputOptions) -> None:
        check_cache_frames(options.cache_frames)
        self.subject, self.box, self.options = subject, box, options
        self._alpha: OrderedDict[int, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self._depth_range: tuple[float, float] | None = None

    def alpha(self, img_id: int) -> np.ndarray:
        """The paste mask of a source frame, kept for the last `options.cache_frames` frames asked for."""
        with self._lock:
            if img_id in self._alpha:
                self._alpha.move_to_end(img_id)
                return self._alpha[img_id]
        paste = self.options.paste
        face_points = self.subject.face_points(img_id) if paste.needs_face_points else None
        alpha = paste.alpha(self.subject.parsing(img_id), face_points)
        with self._lock:  # two threads may compute the same mask: both give the same array
            self._alpha[img_id] = alpha
            while len(self._alpha) > self.options.cache_frames:
                self._alpha.popitem(last=False)
        return alpha

    def fix_depth_range(self, depth: np.ndarray, frame_hw: tuple[int, int], img_id: int) -> None:
        """Depth colours span the first frame's depths, for every frame (so they do not flicker)."""
        self._depth_range = depth_range(self.options.paste.paste_depth(frame_hw, depth, self.alpha(img_id), self.box))

    def compose(self, rendered: dict[str, np.ndarray], source: Future, img_id: int) -> tuple[Any, Any, Any]:
        """(frame, head RGBA or None, depth colours or None) of one output frame, from its render (`render_crop`'s
        outputs) and source frame."""
        frame, alpha = source.result(), self.alpha(img_id)
        out = self.options.paste.paste(frame, rendered["rgb"], alpha, self.box)
        depth_rgb = head = None
        if self.options.depth:
            depth = self.options.paste.paste_depth(frame.shape[:2], rendered["depth"], alpha, self.box)
            depth_rgb = colorize_depth(depth, *self._depth_range)
        if self.options.alpha is not None:
            a = (np.clip(rendered["opacity"], 0, 1) * 255 + 0.5).astype(np.uint8)
            head = np.dstack([rendered["rgb"], a])
        return out, head, depth_rgb


def run_inference(renderer: Renderer, subject: SubjectView, feats: np.ndarray, audio: Path | str, out_dir: Path,
                  options: OutputOptions, name: str = "result", start: int = 0, smooth_window: int = 1,
                  progress: Enabled = "auto") -> InferenceResult:
    """Render one frame per 40 ms of audio, paste back, and encode result.mp4 with the audio.

    Rendering stays on this thread; backgrounds are made and source frames decoded ahead, frames are pasted
    back on `options.workers` threads and encoded in order by another (ernerf/postprocess/pipeline.py).
    """
    t0 = time.perf_counter()
    n = len(feats)
    plan = plan_motion(subject.poses, subject.eye, n, start=start, smooth_window=smooth_window)
    img_ids = [int(subject.img_ids[i]) for i in plan.indices]
    workers = paste_workers(options.workers)
    box = HeadBox.load(subject.layout.head_bbox)
    frames = FrameSource(subject.layout.video)
    ahead = 2 * workers + 2  # frames decoded, backgrounds made and pastes queued ahead (memory stays flat)
    try:
        with ResultWriter(out_dir, audio, n, FPS, options.crf, options.alpha, options.depth, name) as writer, \
                OrderedSink(writer.write, ahead) as sink, thread_pool(workers, "ernerf-paste") as pool, \
                thread_pool(1, "ernerf-decode") as decoder:
            comp = Compositor(subject, box, options)
            comp.alpha(img_ids[0])  # a missing parsing/mesh fails now, not after the first frames
            sources = Lookahead(decoder, frames.get, img_ids, ahead)
            backgrounds = Lookahead(pool, functools.partial(render_background, subject), map(int, plan.indices), ahead)
            with progress_bar(n, "rendering", enabled=progress) as bar:
                rendered = RenderedAhead(renderer, subject, plan, feats, options.rendered)
                for t, raw in rendered.frames(backgrounds.next().result() for _ in range(n)):
                    bar.update(1)
                    source = sources.next()
                    if t == 0 and options.depth:
                        comp.fix_depth_range(raw["depth"], source.result().shape[:2], img_ids[0])
                    sink.put(pool.submit(comp.compose, raw, source, img_ids[t]))
                render_s = rendered.seconds
            sink.finish()
            outputs = writer.close()
    finally:
        frames.close()
    return InferenceResult(outputs, n, time.perf_counter() - t0, render_s)


# ---------------------------------------------------------------- from the Hydra config (infer.py)


def speech_engine(config: Any) -> SpeechEngine:
    """The text-to-speech engine of conf/tts/ (its settings' errors are one line, as every user error)."""
    return instantiate_config(config)


def infer_from_config(cfg: Any, system_loader: Callable[[Path, str], Renderer] | None = None) -> InferenceResult:
    """Everything `python infer.py subject=<name> audio=<file> | text=...` does; returns where the outputs went."""
    plan = plan_inference(cfg)
    text, audio, trained, folder, name = plan.text, plan.audio, plan.trained, plan.folder, plan.name
    stage, ckpt = trained.stage.name, trained.checkpoint
    spoken = None
    if text is not None:  # before the model loads: a bad voice or speed is reported in a second
        spoken = speak_to_wav(speech_engine(cfg.tts), text, folder / f"{name}.wav")
        audio = spoken.path
    if system_loader is None:
        system_loader = loader_for(cfg)  # conf/infer.yaml's engine and encoder backend
    system = system_loader(ckpt, cfg.device)
    kind, dim = audio_kind(system.hparams)
    check_kind(cfg.audio_kind, kind)
    extractor = None if cfg.features else audio_extractor(trained, kind, dim, cfg.audio_extractor)
    feats, warnings = driving_features(audio, kind, dim, extractor, cfg.features)
    subject = load_subject(Path(cfg.paths.data_root) / cfg.subject, trained.feature_file(kind),
                           trained.stage.background, cfg.pose.scale, tuple(cfg.pose.offset), cfg.downscale,
                           cfg.postprocess.cache_frames)
    walk = plan_motion(subject.poses, subject.eye, len(feats), start=cfg.motion.start,
                       smooth_window=cfg.motion.smooth_window)
    subject = with_held_out_codes(subject, system, ckpt, int(walk.indices.max()), cfg.progress)
    pp = cfg.postprocess
    options = OutputOptions(PasteBack(pp.scheme, pp.blend, pp.feather_px, pp.dilate_px),
                            alpha=pp.alpha, depth=pp.depth, crf=pp.crf, workers=pp.workers,
                            cache_frames=pp.cache_frames)
    result = run_inference(system, subject, feats, audio, folder, options, name=name,
                           start=cfg.motion.start, smooth_window=cfg.motion.smooth_window, progress=cfg.progress)
    if spoken is not None:
        result.outputs["speech"] = spoken.path
    stale = stale_warning(ckpt.parents[1], cfg.subject)
    result.warnings = [*([stale] if stale else []), *warnings, *result.warnings]
    result.stage, result.checkpoint = stage, ckpt
    return result


def print_summary(result: InferenceResult) -> None:
    """Tell the user where every output went and how fast it ran."""
    console = Console(soft_wrap=True)  # paths are printed whole, never cut, so they can be copied
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    console.print(f"[bold]{result.num_frames} frames ({result.num_frames / FPS:.1f} s), stage {result.stage}[/bold]")
    for kind, path in [*result.outputs.items(), ("checkpoint", result.checkpoint)]:
        console.print(f"  {kind:<10} {path}", markup=False, highlight=False)
    console.print(f"render {result.render_fps:.1f} frames/s; end to end "
                  f"{result.seconds_per_output_second:.2f} s per output second ({result.seconds_total:.1f} s)")


def infer_command(cfg: Any) -> InferenceResult:
    """What `python infer.py` does with its config: infer, then print where the outputs went."""
    result = infer_from_config(cfg)
    print_summary(result)
    return result
