"""Where a subject's frames live while training, and getting them there: the preload modes and the choice between them
from free memory, frames decoded on a thread pool into preallocated storage, host memory in pinned chunks, and the
device buffers a step's frame is staged into from host memory."""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import time
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ernerf.errors import ErnerfError
from ernerf.progress import progress_bar

log = logging.getLogger(__name__)

GiB = 2**30
# Kept free beside the frames for what training allocates after they are loaded. On the GPU: the model, the ray
# batch, the marcher's samples and the CUDA graphs' pools; in host memory: this process, the CUDA context, the loader.
DEVICE_HEADROOM = 6 * GiB
HOST_HEADROOM = 4 * GiB
# torch's pinned allocator rounds each allocation up to a power of two: one tensor of every frame would pin up to
# twice its size, chunks just under 256 MiB pin less than a frame more each.
CHUNK_BYTES = 2**28

PRELOAD_VALUES = {True: "device", False: "disk", "device": "device", "host": "host", "disk": "disk", "false": "disk",
                  "true": "device", "auto": "auto"}

FrameLoader = Callable[[int], Tensor]  # frame number -> uint8 [H, W, C] on the host


def preload_mode(value: bool | str) -> str:
    """`datamodule.preload` as "device", "host", "disk" or "auto" (true: device, false: disk, as they always meant)."""
    mode = PRELOAD_VALUES.get(value.lower() if isinstance(value, str) else value)
    if mode is None:
        raise ErnerfError(f"datamodule.preload must be auto, device (or true), host or false, got {value!r}.")
    return mode


@dataclass(frozen=True)
class FreeMemory:
    """Bytes free for frames on the training GPU (None on a CPU) and in host memory."""

    device: int | None
    host: int


def free_memory(device: torch.device) -> FreeMemory:
    """What `device` (CUDA: `torch.cuda.mem_get_info`) and the host have free now."""
    gpu = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
    return FreeMemory(gpu, available_host_memory())


def available_host_memory() -> int:
    """The kernel's MemAvailable (free plus reclaimable page cache) on Linux; free pages elsewhere."""
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def choose_preload(requested: str, frames: int, frame_bytes: int, device: torch.device,
                   free: FreeMemory) -> tuple[str, str]:
    """The mode to train with ("device", "host" or "disk") for `frames` frames of `frame_bytes` each, and why (a log
    line). `auto` on a GPU: the device where the frames fit beside the training, else host memory, else the disk; on
    a CPU the disk (the loader's workers decode beside the step). An explicit mode that cannot fit raises, naming the
    next mode down, before anything is loaded."""
    need, gpu = frames * frame_bytes, device.type == "cuda"
    size = f"{frames} frames, {need / GiB:.1f} GiB"
    room = f"{free.host / GiB:.1f} GiB available in host memory"
    if gpu:
        room = f"{free.device / GiB:.1f} GiB free on the GPU, {room}"
    fits_host = need + HOST_HEADROOM <= free.host
    fits = {"device": need + DEVICE_HEADROOM <= free.device if gpu else fits_host, "host": fits_host, "disk": True}
    if requested != "auto":
        if not fits[requested]:
            raise does_not_fit(requested, size, room, gpu)
        return requested, f"datamodule.preload={requested} ({size}; {room})"
    if not gpu:
        return "disk", f"datamodule.preload=auto: disk, as on every CPU run ({size}; {room})"
    choice = next(mode for mode in ("device", "host", "disk") if fits[mode])
    return choice, f"datamodule.preload=auto: {choice} ({size}; {room})"


def does_not_fit(requested: str, size: str, room: str, gpu: bool) -> ErnerfError:
    """The one-line error of an explicit preload mode without room, naming the next mode down."""
    on_gpu = requested == "device" and gpu
    kept = (DEVICE_HEADROOM if on_gpu else HOST_HEADROOM) / GiB
    where = "beside the training" if on_gpu else "in host memory"
    fix = "datamodule.preload=host" if on_gpu else "datamodule.preload=false"
    return ErnerfError(f"datamodule.preload={requested}: the {size} do not fit {where} ({room}; {kept:.0f} GiB kept "
                       f"free): use {fix}.")


class HostFrames:
    """Frames uint8 [F, *frame_shape] in host memory, held as chunks of whole frames (pinned when `pinned`, so a copy
    to the GPU runs asynchronously); `frames[f]` is frame f, a view."""

    def __init__(self, count: int, frame_shape: tuple[int, ...], pinned: bool) -> None:
        self.count, self.frame_shape = count, tuple(frame_shape)
        self.per_chunk = frames_per_chunk(self.frame_shape)
        self.chunks = [torch.empty((min(self.per_chunk, count - start), *self.frame_shape), dtype=torch.uint8,
                                   pin_memory=pinned) for start in range(0, count, self.per_chunk)]

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, frame: int) -> Tensor:
        chunk, row = divmod(int(frame), self.per_chunk)
        return self.chunks[chunk][row]

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.count, *self.frame_shape)

    @property
    def nbytes(self) -> int:
        return sum(chunk.nbytes for chunk in self.chunks)


def frames_per_chunk(frame_shape: tuple[int, ...]) -> int:
    """How many uint8 frames of `frame_shape` a chunk of host memory (CHUNK_BYTES) holds, at least one."""
    return max(1, CHUNK_BYTES // math.prod(frame_shape))


class StagedFrame:
    """The training step's frame on the device: one static buffer per kind (image, background, masks) that a host
    frame is copied into before the step reads it. A CUDA graph reads fixed addresses, so it builds its batch from
    whichever frame was staged last.

    `stage` enqueues the copy on the current stream, as the step's kernels: the copy lands before the step that
    follows reads the buffer, and the next copy waits for that step, so one buffer suffices, as long as frames are
    staged just before their step (the data module's `on_after_batch_transfer`), never when a loader prefetches."""

    def __init__(self, sources: dict[str, HostFrames], device: torch.device) -> None:
        self.sources = sources
        self.buffers = {kind: torch.empty(frames.frame_shape, dtype=torch.uint8, device=device)
                        for kind, frames in sources.items()}

    def stage(self, frame: int) -> None:
        """Copy frame number `frame` of every kind into the buffers (asynchronously from pinned memory)."""
        for kind, frames in self.sources.items():
            self.buffers[kind].copy_(frames[frame], non_blocking=True)


def decode_into(out: Tensor | HostFrames, first: int, load: FrameLoader, pool: ThreadPoolExecutor,
                done: Callable[[], None]) -> None:
    """Decode frames `first .. first + len(out) - 1` into the rows of `out` on the pool's threads (PIL and torch let
    go of the GIL while they decode, resize and copy); `done()` after each frame."""

    def one(row: int) -> None:
        out[row].copy_(load(first + row))
        done()

    for _ in pool.map(one, range(len(out))):  # re-raises a thread's error here
        pass


def preload_frames(kinds: dict[str, FrameLoader], count: int, frame_shapes: dict[str, tuple[int, ...]],
                   device: torch.device, host: bool, threads: int | None = None) -> dict[str, Tensor | HostFrames]:
    """Every frame of each kind, decoded once on `threads` threads (default: one per CPU) into storage allocated
    up front, never a list of frames stacked afterwards (twice the memory at the peak): on `device` ([F, H, W, C]
    tensors), or in host memory when `host` (HostFrames, pinned when `device` is a GPU). A progress bar shows the
    rate and the time left."""
    pinned = device.type == "cuda"
    started, stored = time.perf_counter(), {}
    with ThreadPoolExecutor(threads or usable_cpus()) as pool, \
            progress_bar(count * len(kinds), "preloading frames", unit="image") as bar:
        for kind, load in kinds.items():
            shape = frame_shapes[kind]
            if host:
                stored[kind] = HostFrames(count, shape, pinned)
                decode_into(stored[kind], 0, load, pool, lambda: bar.update(1))
            else:
                stored[kind] = decode_to_device(load, count, shape, device, pool, lambda: bar.update(1))
    total = sum(frames.nbytes for frames in stored.values())
    log.info("preloaded %d frames (%s, %.2f GiB) %s in %.1f s", count, ", ".join(kinds), total / GiB,
             "into host memory" if host else f"on {device}", time.perf_counter() - started)
    return stored


class KeptFrames:
    """Preloaded frames kept for the next stage of this process (`train.py stage=all`): the head and lips stages read
    the same images and torso backgrounds, the torso stage the same images, so each kind is decoded once. `key` says
    what they were decoded from and where they live; a kind the next store does not read is let go before it loads
    its own."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.frames: dict[str, Tensor | HostFrames] = {}

    def take(self, key: tuple, kinds: Collection[str]) -> dict[str, Tensor | HostFrames]:
        """The kept frames of `kinds` decoded under `key`; every other kind is dropped."""
        keep = key == self.key
        self.key = key
        self.frames = {kind: frames for kind, frames in self.frames.items() if keep and kind in kinds}
        return dict(self.frames)

    def keep(self, frames: dict[str, Tensor | HostFrames]) -> None:
        self.frames = dict(frames)

    def counted_free(self, free: FreeMemory) -> FreeMemory:
        """`free` with what the kept frames hold added back: the next store reuses them or lets them go before it
        loads anything, so they are room for its frames."""
        gpu = sum(f.nbytes for f in self.frames.values() if isinstance(f, Tensor) and f.is_cuda)
        host = sum(f.nbytes for f in self.frames.values()) - gpu
        return FreeMemory(None if free.device is None else free.device + gpu, free.host + host)


def let_go_of_unused_memory(device: torch.device) -> None:
    """Collect what a finished stage left (its model, graphs, frames not kept: cycles keep them until a collection)
    and hand the GPU's cached blocks back, so that free memory is measured as the next stage will find it."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


_kept: KeptFrames | None = None


@contextlib.contextmanager
def frames_kept_between_stages() -> Iterator[KeptFrames]:
    """Within it, a FrameStore takes the frames the previous one preloaded where it reads the same (`KeptFrames`)."""
    global _kept
    outer, _kept = _kept, KeptFrames()
    try:
        yield _kept
    finally:
        _kept = outer


def kept_frames() -> KeptFrames | None:
    """The frames kept between stages, when a `frames_kept_between_stages` is open."""
    return _kept


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which container limits narrow), else the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def decode_to_device(load: FrameLoader, count: int, shape: tuple[int, ...], device: torch.device,
                     pool: ThreadPoolExecutor, done: Callable[[], None]) -> Tensor:
    """Frames [count, *shape] on `device`; on a GPU decoded a chunk at a time into one reused (pinned) host chunk, so
    the host never holds every frame."""
    frames = torch.empty((count, *shape), dtype=torch.uint8, device=device)
    if device.type == "cpu":
        decode_into(frames, 0, load, pool, done)
        return frames
    bounce = torch.empty((min(count, frames_per_chunk(shape)), *shape), dtype=torch.uint8,
                         pin_memory=device.type == "cuda")
    for first in range(0, count, len(bounce)):
        rows = bounce[: min(len(bounce), count - first)]
        decode_into(rows, first, load, pool, done)
        frames[first : first + len(rows)].copy_(rows)  # blocking: the next chunk overwrites the bounce buffer
    return frames
