"""The subject dataset: a frozen parse of the folder (SubjectData), frame storage, and ray batches for training."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from datamodules.frames import (FreeMemory, HostFrames, StagedFrame, choose_preload, free_memory, kept_frames,
                                let_go_of_unused_memory, preload_frames, preload_mode)
from datamodules.samplers import RandomRaySampler, RaySampler, Rect
from ernerf.audio.features import smoothing_rows
from ernerf.constants import SMOOTH_WINDOW
from ernerf.errors import ErnerfError
from ernerf.io.layout import SubjectLayout, check_downscale
from ernerf.picks import evenly_spaced
# check_subject: train.py makes it before it imports this module (ernerf/apps/preflight.py)
from ernerf.preprocess.check import check_subject, redo_hint
from ernerf.rendering.rays import get_rays, nerf_matrix_to_ngp

log = logging.getLogger(__name__)

RECT_NAMES = ("face", "lips", "eyes", "lower_half")
FRAME_CHANNELS = {"image": 3, "background": 3, "masks": 2}  # per-frame kinds a FrameStore keeps, uint8 channels


@dataclass(frozen=True)
class SubjectData:
    """Everything parsed from one subject folder; frames `0 .. num_train-1` train, the rest validate."""

    layout: SubjectLayout
    height: int
    width: int
    downscale: int
    intrinsics: tuple[float, float, float, float]  # fx, fy, cx, cy at this image size
    poses: Tensor  # [F, 4, 4] camera-to-world in the model's (ngp) space
    img_ids: Tensor  # [F] long: file index of each frame
    aud_ids: Tensor  # [F] long: row of the audio features
    num_train: int
    audio: Tensor  # [A, 16, C] float32
    eye: Tensor  # [F] AU45 blink scaled to [0, 1] as ER-NeRF (clip(AU45, 0, 2) / 2)
    rects: dict[str, Tensor]  # name -> [F, 4] (top, bottom, left, right) at this image size

    @property
    def num_frames(self) -> int:
        return int(self.poses.shape[0])

    @property
    def feature_dim(self) -> int:
        return int(self.audio.shape[-1])

    def audio_window(self, frame: int) -> Tensor:
        """Features of the 8 frames around `frame` [8, 16, C], the edge windows repeated beyond the clip's ends
        (`smoothing_rows`), as `infer.py` pads an utterance."""
        return self.audio[torch.from_numpy(smoothing_rows(int(self.aud_ids[frame]), self.audio.shape[0]))]

    def training_audio(self) -> Tensor:
        """The feature windows of the training frames [num_train, 16, C]: what the audio net's input statistics are
        taken from (held-out frames stay unseen)."""
        return self.audio[self.aud_ids[: self.num_train]]

    def rects_of(self, frame: int) -> dict[str, Rect]:
        """The named regions of one frame."""
        return {name: Rect(*(int(v) for v in r[frame])) for name, r in self.rects.items()}


def parse_subject(root: Path, audio_file: str, downscale: int = 1, scale: float = 4.0,
                  offset: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> SubjectData:
    """Read transforms, intrinsics, audio features, AU45 and landmark rectangles of a subject folder."""
    layout = SubjectLayout(Path(root))
    check_downscale(downscale)
    check_subject(layout, audio_file)
    train, val = (json.loads(layout.transforms(s).read_text()) for s in ("train", "val"))
    frames = train["frames"] + val["frames"]
    height, width = int(train["h"]) // downscale, int(train["w"]) // downscale
    focal = float(train["focal_len"]) / downscale
    poses = np.stack([nerf_matrix_to_ngp(np.asarray(f["transform_matrix"], np.float32), scale=scale, offset=offset) for f in frames])
    img_ids = torch.tensor([f["img_id"] for f in frames], dtype=torch.long)
    au45 = read_au45(layout.au)
    eye = np.clip(au45[np.minimum(img_ids.numpy(), len(au45) - 1)], 0, 2) / 2
    return SubjectData(
        layout=layout, height=height, width=width, downscale=downscale,
        intrinsics=(focal, focal, float(train["cx"]) / downscale, float(train["cy"]) / downscale),
        poses=torch.as_tensor(poses, dtype=torch.float32), img_ids=img_ids,
        aud_ids=torch.tensor([f["aud_id"] for f in frames], dtype=torch.long), num_train=len(train["frames"]),
        audio=torch.from_numpy(np.load(layout.root / audio_file).astype(np.float32)),
        eye=torch.as_tensor(eye, dtype=torch.float32),
        rects=read_rects(layout, img_ids.tolist(), downscale, height, width),
    )


def read_au45(path: Path) -> np.ndarray:
    """AU45 intensities [N] from an OpenFace-style au.csv (column ' AU45_r')."""
    lines = path.read_text().strip().splitlines()
    header = [h.strip() for h in lines[0].split(",")]
    if "AU45_r" not in header:
        raise ErnerfError(f"{path} has no AU45_r column: {redo_hint(path)}.")
    column = header.index("AU45_r")
    return np.array([float(line.split(",")[column]) for line in lines[1:]], dtype=np.float32)


def read_rects(layout: SubjectLayout, img_ids: list[int], downscale: int, height: int, width: int) -> dict[str, Tensor]:
    """Face, lips (square, as ER-NeRF), eyes and lower-half rectangles [F, 4] from the 68 landmarks."""
    rects = np.zeros((len(RECT_NAMES), len(img_ids), 4), np.int64)
    for k, i in enumerate(img_ids):
        lms = np.loadtxt(layout.lms(i)) / downscale  # [68, 2] (x, y)
        rects[0, k] = box(lms)
        rects[1, k] = square(box(lms[48:60]), height, width)
        rects[2, k] = box(lms[36:48])
        rects[3, k] = (int(lms[31:36, 1].min()), *box(lms)[1:])
    return {name: torch.from_numpy(r) for name, r in zip(RECT_NAMES, rects)}


def box(points: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding rectangle (top, bottom, left, right) of points [K, 2] (x, y)."""
    return int(points[:, 1].min()), int(points[:, 1].max()), int(points[:, 0].min()), int(points[:, 0].max())


def square(rect: tuple[int, int, int, int], height: int, width: int) -> tuple[int, int, int, int]:
    """Grow a rectangle to a square around its centre, clipped to the image."""
    top, bottom, left, right = rect
    cy, cx, half = (top + bottom) // 2, (left + right) // 2, max(bottom - top, right - left) // 2
    return max(0, cy - half), min(height, cy + half), max(0, cx - half), min(width, cx + half)


def frame_kinds(background: str, parsing_masks: bool) -> list[str]:
    """What a store keeps per frame: the image, the torso background (the plate is kept once), the parsing masks."""
    return ["image"] + ["background"] * (background == "torso") + ["masks"] * parsing_masks


class FrameStore:
    """Ground-truth images, per-frame backgrounds and parsing masks as uint8 [H, W, C], where `preload` puts them:
    "device" (every frame on `device`), "host" (every frame in host memory, pinned on a GPU; a training step's frame
    is staged into device buffers, `stage`) or "disk" (read per use); true and false mean device and disk.

    Per-frame conditioning (poses, audio, eye, regions) and frame indices live on `device` in every mode."""

    def __init__(self, data: SubjectData, background: str = "torso", preload: bool | str = False,
                 device: torch.device | str = "cpu", parsing_masks: bool = False, threads: int | None = None) -> None:
        if background not in ("torso", "plate"):
            raise ErnerfError(f"background must be 'torso' (head stage) or 'plate' (torso stage), got '{background}'.")
        if background == "torso" and not data.layout.torso_dir.exists():
            raise ErnerfError(f"{data.layout.torso_dir} is missing: {redo_hint(data.layout.torso_dir)}, "
                              "or train with datamodule.background=plate.")
        self.mode = preload_mode(preload)
        if self.mode == "auto":
            raise ValueError("FrameStore takes a chosen preload mode: resolve 'auto' with choose_preload first")
        self.data, self.background_kind, self.device = data, background, torch.device(device)
        plate = self._read(data.layout.background)
        self.plate = torch.from_numpy(plate).to(self.device)
        # what decoding threads put torso images over: as an image (opaque and clear pixels) and in float (the rest)
        self.plate_image, self.blend_plate = Image.fromarray(plate), plate.astype(np.float32)
        # Per-frame conditioning lives where the rays are made: a host-to-device copy per step would stall the GPU.
        self.poses, self.eye = data.poses.to(self.device), data.eye.to(self.device)  # [F, 4, 4], [F]
        self.aud_ids = data.aud_ids.to(self.device)  # [F]
        self.rects = {name: r.to(self.device) for name, r in data.rects.items()}  # name -> [F, 4]
        half = SMOOTH_WINDOW // 2  # the edge windows repeated on both ends (SubjectData.audio_window): one slice each
        edges = (data.audio[:1].expand(half, -1, -1), data.audio, data.audio[-1:].expand(half, -1, -1))
        self.padded_audio = torch.cat(edges).to(self.device)
        self.frame_ids = torch.arange(data.num_frames, device=self.device)  # frame indices are views of it
        self.loaders = self._frame_loaders(parsing_masks)  # kind -> frame number -> uint8 [H, W, C] on the host
        # kind -> [F, H, W, C] on the device (preload "device") or HostFrames (preload "host"); empty: from disk
        self.frames: dict[str, Tensor | HostFrames] = {}
        self.staged: StagedFrame | None = None
        if self.mode != "disk":
            self.frames = self._preload(threads)
        if self.mode == "host":
            self.staged = StagedFrame(self.frames, self.device)

    def _preload(self, threads: int | None) -> dict[str, Tensor | HostFrames]:
        """Every frame of each kind where the mode puts them; kinds the previous stage of this process preloaded
        from the same subject, at the same size and place, are taken as they are (`kept_frames`)."""
        data, keeper = self.data, kept_frames()
        key = (str(data.layout.root.resolve()), data.num_frames, data.height, data.width, self.mode, str(self.device))
        reused = keeper.take(key, self.loaders) if keeper is not None else {}
        if reused:
            log.info("took the %s of %d frames from the previous stage", ", ".join(reused), data.num_frames)
        missing = {kind: load for kind, load in self.loaders.items() if kind not in reused}
        shapes = {kind: (data.height, data.width, FRAME_CHANNELS[kind]) for kind in missing}
        loaded = preload_frames(missing, data.num_frames, shapes, self.device, self.mode == "host", threads) \
            if missing else {}
        frames = {kind: reused[kind] if kind in reused else loaded[kind] for kind in self.loaders}
        if keeper is not None:
            keeper.keep(frames)
        return frames

    def _frame_loaders(self, parsing_masks: bool) -> dict[str, Callable[[int], Tensor]]:
        return {kind: self._loader(kind) for kind in frame_kinds(self.background_kind, parsing_masks)}

    def _loader(self, kind: str) -> Callable[[int], Tensor]:
        return {"image": self._load_image, "background": self._load_background, "masks": self._load_parsing_masks}[kind]

    def stage(self, frame: int) -> None:
        """Copy frame number `frame` from host memory into the buffers a training step reads (preload "host")."""
        self.staged.stage(frame)

    # ------------------------------------------------------------ by frame number (whole frames: validation, apps)
    def index(self, frame: int) -> Tensor:
        """Frame number -> the frame index the model and the ray builder take: [1] long on this store's device (a
        view of a stored range: no copy, no kernel)."""
        return self.frame_ids[frame : frame + 1]

    def audio_window(self, frame: int) -> Tensor:
        """`audio_window_at` of a frame number: [8, 16, C]."""
        return self.audio_window_at(self.index(frame))

    def image(self, frame: int) -> Tensor:
        """Ground truth of a frame number, uint8 [H, W, 3]."""
        return self._frame("image", frame)

    def background(self, frame: int) -> Tensor:
        """What lies behind the head in a frame number, uint8 [H, W, 3]."""
        return self.plate if self.background_kind == "plate" else self._frame("background", frame)

    def parsing_masks(self, frame: int) -> Tensor:
        """`parsing_masks_at` of a frame number: uint8 [H, W, 2]."""
        return self._frame("masks", frame)

    def _frame(self, kind: str, frame: int) -> Tensor:
        """One kind of a frame number on the device; from host memory directly, not through the staged buffers (which
        hold the training step's frame)."""
        if self.staged is not None and kind in self.frames:
            return self.frames[kind][frame].to(self.device)
        return self._frame_at(kind, self.index(frame))

    # ------------------------------------------------------------ by frame index ([1] long on this store's device)
    # Frames preloaded on the device are gathered there without a host sync, so a CUDA graph can build its batch; in
    # host memory they are the staged frame (`stage` first); read from disk, the index's number is taken on the host
    # (such a store lives on the CPU).
    def audio_window_at(self, frame: Tensor) -> Tensor:
        """`SubjectData.audio_window` of one frame, on this store's device: [8, 16, C]."""
        rows = self.aud_ids[frame] + torch.arange(SMOOTH_WINDOW, device=self.device)  # rows of the padded features
        return self.padded_audio[rows.clamp(max=self.padded_audio.shape[0] - 1)]  # past the end: the last, as SubjectData

    def image_at(self, frame: Tensor) -> Tensor:
        """Ground truth of one frame, uint8 [H, W, 3]."""
        return self._frame_at("image", frame)

    def background_at(self, frame: Tensor) -> Tensor:
        """What lies behind the head in one frame, uint8 [H, W, 3]: torso over the plate, or the plate."""
        return self.plate if self.background_kind == "plate" else self._frame_at("background", frame)

    def parsing_masks_at(self, frame: Tensor) -> Tensor:
        """uint8 [H, W, 2]: torso+neck and head coverage (0..255) from the frame's parsing map (torso stage)."""
        return self._frame_at("masks", frame)

    def _frame_at(self, kind: str, frame: Tensor) -> Tensor:
        if kind not in self.frames:  # read from disk (also a kind the store was not asked to preload)
            return self._loader(kind)(int(frame)).to(self.device)
        if self.staged is not None:
            return self.staged.buffers[kind]
        return self.frames[kind][frame][0]

    def _read(self, path: Path, mode: str = "RGB") -> np.ndarray:
        """uint8 [H, W, 3|4] at the training size."""
        return np.array(self._read_image(path, mode))  # writable: torch.from_numpy warns on a read-only view

    def _read_image(self, path: Path, mode: str) -> Image.Image:
        """The image at the training size. PIL rather than OpenCV: training machines need no opencv."""
        try:
            with Image.open(path) as img:
                image = img.convert(mode)
                if image.size != (self.data.width, self.data.height):
                    image = image.resize((self.data.width, self.data.height), Image.Resampling.BOX)
                return image
        except (OSError, ValueError) as err:
            raise ErnerfError(f"cannot read {path}: {redo_hint(path)}.") from err

    def _load_parsing_masks(self, frame: int) -> Tensor:
        path = self.data.layout.parsing(int(self.data.img_ids[frame]))
        try:
            with Image.open(path) as img:
                rgb = np.asarray(img.convert("RGB")).astype(np.int16)
        except (OSError, ValueError) as err:
            raise ErnerfError(f"cannot read {path}: {redo_hint(path)}; the torso stage needs the parsing maps.") from err
        red, green, blue = (rgb[..., c] > 127 for c in range(3))
        masks = [((red | green) & ~blue), (blue & ~red & ~green)]  # on disk: torso red, neck green, head blue
        return torch.from_numpy(np.stack([self._resized(m) for m in masks], -1))

    def _resized(self, mask: np.ndarray) -> np.ndarray:
        """A full-size bool mask as uint8 coverage at the training size."""
        image = Image.fromarray(mask.astype(np.uint8) * 255)
        if image.size != (self.data.width, self.data.height):
            image = image.resize((self.data.width, self.data.height), Image.Resampling.BOX)
        return np.asarray(image)

    def _load_image(self, frame: int) -> Tensor:
        return torch.from_numpy(self._read(self.data.layout.gt(int(self.data.img_ids[frame]))))

    def _load_background(self, frame: int) -> Tensor:
        torso = self._read_image(self.data.layout.torso(int(self.data.img_ids[frame])), "RGBA")
        return torch.from_numpy(torso_over_plate(torso, self.plate_image, self.blend_plate))


def torso_over_plate(torso: Image.Image, plate: Image.Image, blend_plate: np.ndarray) -> np.ndarray:
    """An RGBA torso image over the plate (as an RGB image and in float32 [H, W, 3]), uint8 [H, W, 3]: what
    `blend_over_plate` gives for every pixel.

    In that formula a pixel of alpha 0 is the plate and one of alpha 255 the torso, exactly (a/255 is 0.0 or 1.0), and
    preprocessing writes no other alpha (a downscale's resize does, at the edges): PIL's paste copies those two kinds
    in C (the float formula over every pixel took longer than decoding the PNG), and only the other pixels go through
    it.
    """
    over = plate.copy()
    # alpha 255: torso, 0: plate. PIL's integer blend of the others happens to round as the formula does (Pillow 13,
    # every colour, alpha and plate value), but the formula is the reference: those pixels are redone below.
    over.paste(torso, (0, 0), torso)
    out = np.array(over)
    alpha = np.asarray(torso.getchannel("A"))
    soft = (alpha - np.uint8(1)) < np.uint8(254)  # 0 < alpha < 255 (0 wraps round to 255)
    if not soft.any():
        return out
    rgba = np.asarray(torso)
    if np.count_nonzero(soft) > soft.size // 4:  # gathering pixels costs more than the whole frame's formula
        return blend_over_plate(rgba, blend_plate)
    pixels = np.nonzero(soft)
    out[pixels] = blend_over_plate(rgba[pixels], blend_plate[pixels])
    return out


def blend_over_plate(rgba: np.ndarray, plate: np.ndarray) -> np.ndarray:
    """uint8 RGBA [..., 4] over a float32 plate [..., 3], rounded to uint8 [..., 3]: the formula of ER-NeRF's loader.

    numpy, not torch: torch spreads each small op over its intra-op threads, which stalls on a busy CPU and competes
    with the other decoding threads; the float32 arithmetic and rounding are the same.
    """
    rgba = rgba.astype(np.float32)
    alpha = rgba[..., 3:] / 255
    mixed = rgba[..., :3] * alpha + plate * (1 - alpha)
    return np.round(mixed).astype(np.uint8)


def to_unit(pixels: Tensor) -> Tensor:
    """uint8 colours -> float in [0, 1]."""
    return pixels.float() / 255


class TrainRays(Dataset):
    """One training frame per item: `sampler` picks its pixels; rays, targets, background and conditioning.

    An item's frame number becomes the frame index (`FrameStore.index`) that the batch carries. With `frames_only`,
    an item is just `{"frame_index": index, "layout": turn}` and the step builds the batch itself with `build`: a
    CUDA-graphed step draws its rays inside the graph (see `SubjectDataModule.device_batches`). Frames in host memory
    are staged per step: an item also names its frame number ("stage_frame") until `stage` copies that frame in."""

    def __init__(self, data: SubjectData, store: FrameStore, sampler: RaySampler, eye_jitter: float = 0.05,
                 parsing_masks: bool = False, audio_augment: Callable[[Tensor], Tensor] | None = None) -> None:
        self.data, self.store, self.sampler, self.eye_jitter = data, store, sampler, eye_jitter
        self.audio_augment = audio_augment  # [8, 16, C] -> a randomly perturbed copy (ernerf.audio.augment)
        self.parsing_masks = parsing_masks
        self.frames_only = False

    def __len__(self) -> int:
        return self.data.num_train

    def __getitem__(self, frame: int) -> dict:
        index = self.store.index(frame)
        if self.store.staged is not None:  # built after `stage`, just before the step, not when the loader prefetches
            return {"frame_index": index, "layout": self.sampler.next_layout(), "stage_frame": frame}
        if self.frames_only:
            return {"frame_index": index, "layout": self.sampler.next_layout()}
        return self.build(index, self.data.rects_of(frame))

    def stage(self, item: dict) -> dict:
        """Copy an item's frame from host memory into the store's staged buffers; return what the step takes: the
        item without its frame number when the step builds the batch (`frames_only`), else the batch built now."""
        item = dict(item)
        frame = item.pop("stage_frame")
        self.store.stage(frame)
        if self.frames_only:
            return item
        return self.build(item["frame_index"], self.data.rects_of(frame), item["layout"])

    def build_turn(self, frame: Tensor, layout: int) -> dict:
        """`build` as a graphed step calls it (`SubjectDataModule.device_batches`): frame index `frame` [1], the
        sampler's turn `layout`, the regions left to the store."""
        return self.build(frame, layout=layout)

    def build(self, frame: Tensor, rects: Mapping[str, Rect] | None = None, layout: int | None = None) -> dict:
        """The ray batch of frame index `frame` ([1] long on the store's device), its pixels drawn by the sampler
        (by its turn `layout` of `sampler.layouts()` when given). On preloaded frames, with a sampler of fixed shape
        and the regions left to the store (`rects` None), it syncs nothing, so a CUDA graph can run it."""
        data, store, device = self.data, self.store, self.store.device
        sampler = self.sampler if layout is None else self.sampler.layouts()[layout]
        if rects is None:
            rects = {name: r[frame][0] for name, r in store.rects.items()}  # [4] each, on the device
        sample = sampler(data.height, data.width, rects, device=device, frame=frame)
        index = sample.index  # [N]
        weights = {} if sample.loss_weight is None else {"loss_weight": sample.loss_weight}  # [N]
        rays_o, rays_d = get_rays(store.poses[frame], data.intrinsics, data.height, data.width, index[None])
        jitter = (torch.rand(1, device=device) - 0.5) * (2 * self.eye_jitter)  # ER-NeRF: +-0.05 so blinks interpolate
        audio = store.audio_window_at(frame)  # [8, 16, C]
        if self.audio_augment is not None:
            audio = self.audio_augment(audio)
        return self.masks(frame, index) | weights | {
            "rays_o": rays_o[0], "rays_d": rays_d[0],  # [N, 3]
            "rgb": to_unit(store.image_at(frame).reshape(-1, 3)[index]),  # [N, 3]
            "bg": to_unit(store.background_at(frame).reshape(-1, 3)[index]),  # [N, 3]
            "face_mask": rect_contains(store.rects["face"][frame][0], index, data.width),  # [N]
            "pixel_index": index, "patch_shape": sample.patch_shape, "height": data.height, "width": data.width,
            "c2w": store.poses[frame][0],  # [4, 4]
            "audio": audio,  # [8, 16, C]
            "eye": store.eye[frame] + jitter,  # [1]
            "frame_index": frame,  # [1]
        }

    def masks(self, frame: Tensor, index: Tensor) -> dict[str, Tensor]:
        """Torso+neck coverage [N] in [0, 1] and head mask [N] of the sampled pixels (when parsing masks are on)."""
        if not self.parsing_masks:
            return {}
        masks = self.store.parsing_masks_at(frame).reshape(-1, 2)[index]
        return {"torso_mask": to_unit(masks[:, 0]), "head_mask": masks[:, 1] > 127}


def rect_contains(rect: Tensor, index: Tensor, width: int) -> Tensor:
    """Which flat pixel ids [N] fall inside `rect` [4] (top, bottom, left, right; half-open): bool [N]."""
    rows, cols = index // width, index % width
    return (rows >= rect[0]) & (rows < rect[1]) & (cols >= rect[2]) & (cols < rect[3])


class FullFrames(Dataset):
    """Whole frames (validation): camera, image and background; the individual code is left to the model."""

    def __init__(self, data: SubjectData, store: FrameStore, frames: list[int]) -> None:
        self.data, self.store, self.frames = data, store, frames

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, item: int) -> dict:
        data, frame = self.data, self.frames[item]
        return {
            "c2w": self.store.poses[frame], "intrinsics": torch.tensor(data.intrinsics),  # [4, 4], [4]
            "rgb": to_unit(self.store.image(frame)), "bg": to_unit(self.store.background(frame)),  # [H, W, 3]
            "audio": self.store.audio_window(frame), "eye": self.store.eye[frame : frame + 1],
            "frame": frame, "frame_index": None, "height": data.height, "width": data.width,
        }


class SubjectDataModule(L.LightningDataModule):
    """Training rays and validation frames of one preprocessed subject.

    preload: where the frames live (FrameStore): auto, device (true), host or false (disk); `choose_preload` says
        what auto picks. free_memory: `device -> FreeMemory`, what the choice reads (tests pass their own figures).
    audio_augment: a random perturbation of each training audio window (conf/audio_augment/), or None."""

    def __init__(self, subject_dir: str, audio_file: str, sampler: RaySampler | None = None, num_rays: int = 65536,
                 preload: bool | str = "auto", downscale: int = 1, scale: float = 4.0,
                 offset: tuple[float, float, float] = (0.0, 0.0, 0.0), background: str = "torso",
                 eye_jitter: float = 0.05, num_val_frames: int | None = 8, num_workers: int = 0,
                 parsing_masks: bool = False, audio_augment: Callable[[Tensor], Tensor] | None = None,
                 free_memory: Callable[[torch.device], FreeMemory] = free_memory) -> None:
        super().__init__()
        self.subject_dir, self.audio_file = Path(subject_dir), audio_file
        self.sampler = sampler or RandomRaySampler(num_rays)
        self.preload, self.free_memory = preload_mode(preload), free_memory
        self.downscale, self.scale, self.offset = downscale, scale, tuple(offset)
        self.background, self.eye_jitter = background, eye_jitter
        self.num_val_frames, self.num_workers = num_val_frames, num_workers
        self.parsing_masks = parsing_masks  # the torso stage's alpha targets
        self.audio_augment = audio_augment  # training windows only: validation and inference hear the audio as it is
        self._data: SubjectData | None = None
        self.store: FrameStore | None = None
        self._train_rays: TrainRays | None = None

    @property
    def data(self) -> SubjectData:
        """The parsed subject (parsed on first use)."""
        if self._data is None:
            self._data = parse_subject(self.subject_dir, self.audio_file, self.downscale, self.scale, self.offset)
        return self._data

    @property
    def num_train_frames(self) -> int:
        return self.data.num_train

    @property
    def frame_size(self) -> tuple[int, int]:
        """(height, width) of the training frames, in pixels."""
        return self.data.height, self.data.width

    def conditioning(self, frame: int) -> tuple[Tensor, Tensor]:
        """Audio window [8, 16, C] and eye [1] (without the training jitter) of training frame number `frame`, on
        the frames' device: what an occupancy-grid refresh conditions the density on."""
        index = self.store.index(frame)
        return self.store.audio_window_at(index), self.store.eye[index]

    def setup(self, stage: str | None = None) -> None:
        if self.store is not None:
            return
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        mode = self.preload_mode_for(device)
        store_device = device if mode != "disk" else torch.device("cpu")  # the loader's workers build disk batches
        self.store = FrameStore(self.data, self.background, mode, store_device, self.parsing_masks)
        self.sampler.fit(self.store.rects)  # on the frames' device: state a sampler keeps lives beside them

    def state_dict(self) -> dict[str, Any]:
        """What the ray sampler learnt (an error map), so that a resumed run samples where it left off."""
        sampler = self.sampler.state_dict()
        return {"sampler": sampler} if sampler else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Lightning restores this after `setup`: the sampler is fitted to the subject by then."""
        if "sampler" in state_dict:
            self.sampler.load_state_dict(state_dict["sampler"])

    def preload_mode_for(self, device: torch.device) -> str:
        """`preload` resolved for training on `device` from the frames' size and free memory (logged with why), before
        anything is loaded; an explicit mode that cannot fit raises."""
        data = self.data
        channels = sum(FRAME_CHANNELS[kind] for kind in frame_kinds(self.background, self.parsing_masks))
        frame_bytes = data.height * data.width * channels
        keeper = kept_frames()
        if keeper is not None:  # a stage of a chain: the previous stage is over
            let_go_of_unused_memory(device)
        free = self.free_memory(device)
        mode, why = choose_preload(self.preload, data.num_frames, frame_bytes, device,
                                   free if keeper is None else keeper.counted_free(free))
        log.info(why)
        return mode

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Frames in host memory: stage the training step's frame into the device buffers its batch is read from.
        Lightning calls this just before the step, on the step's stream, after the loader has prefetched the next
        item: so the copy lands after the previous step and before this one (`StagedFrame`)."""
        if isinstance(batch, dict) and "stage_frame" in batch:
            return self.train_rays.stage(batch)
        return batch

    def val_frames(self) -> list[int]:
        """Held-out frames to render, evenly spaced over the validation split."""
        frames = list(range(self.data.num_train, self.data.num_frames)) or [self.data.num_train - 1]
        if self.num_val_frames is None:
            return frames
        return [frames[k] for k in evenly_spaced(len(frames), self.num_val_frames)]  # all of them when fewer

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        # device tensors stay in this process; items of staged frames are only numbers
        workers = 0 if self.store.device.type != "cpu" or self.store.staged is not None else self.num_workers
        return DataLoader(dataset, batch_size=None, shuffle=shuffle, num_workers=workers, persistent_workers=workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_rays, shuffle=True)

    @property
    def train_rays(self) -> TrainRays:
        """The training dataset (one per data module, so the step and the loader share it)."""
        if self._train_rays is None:
            self._train_rays = TrainRays(self.data, self.store, self.sampler, self.eye_jitter, self.parsing_masks,
                                          self.audio_augment)
        return self._train_rays

    def device_batches(self) -> Callable[[Tensor, int], dict] | None:
        """`(frame index [1], layout) -> ray batch`, built on the GPU without a host sync, when the data allows it
        (frames preloaded on a CUDA device or staged there from host memory, a sampler of fixed shapes); the loader
        then yields frame indices and the sampler's turn (`layout`) only. None otherwise: the loader keeps yielding
        whole batches."""
        if self.store is None or self.store.device.type != "cuda" or self.store.mode == "disk" or not self.fixed_layouts:
            return None
        self.train_rays.frames_only = True
        return self.train_rays.build_turn

    @property
    def fixed_layouts(self) -> bool:
        """Whether the training batches come in a fixed set of shapes (one per sampler turn), as CUDA graphs need."""
        return self.sampler.fixed_shape

    def val_dataloader(self) -> DataLoader:
        return self._loader(FullFrames(self.data, self.store, self.val_frames()), shuffle=False)
