"""Ray samplers: which pixels of a training frame become rays (random or error-guided, patches, the lips rectangle)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from datamodules.error_map import ErrorMap
from ernerf.errors import ErnerfError


@dataclass(frozen=True)
class Rect:
    """Half-open pixel rectangle: rows [top, bottom), columns [left, right)."""

    top: int
    bottom: int
    left: int
    right: int

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def width(self) -> int:
        return self.right - self.left

    def contains(self, index: Tensor, width: int) -> Tensor:
        """Which flat pixel ids [N] (row-major, image `width` wide) fall inside: bool [N]."""
        rows, cols = index // width, index % width
        return (rows >= self.top) & (rows < self.bottom) & (cols >= self.left) & (cols < self.right)


@dataclass(frozen=True)
class PixelSample:
    """Flat pixel ids [N] of one frame, the (h, w) grid they form when they are patches (else None), and the loss
    weight [N] of each ray when the draw is not uniform and asks the loss to make up for it (else None)."""

    index: Tensor
    patch_shape: tuple[int, int] | None = None
    loss_weight: Tensor | None = None


class RaySampler:
    """Base: picks flat pixel ids of an H x W frame; `rects` are the frame's named regions (face, lips...), as Rects
    or as [4] long tensors (top, bottom, left, right) on the frames' device."""

    fixed_shape = True  # every call returns the same number of pixels (and patch shape): a CUDA graph can replay it

    def __call__(self, height: int, width: int, rects: Mapping[str, Rect | Tensor],
                 generator: torch.Generator | None = None, device: torch.device | str | None = None,
                 frame: Tensor | None = None) -> PixelSample:
        """Pixel ids on `device` (where the frames are: drawing them there spares a host-to-device copy per step);
        `frame`: the frame index ([1] long on the frames' device), for samplers that keep state per frame."""
        raise NotImplementedError

    def fit(self, rects: Mapping[str, Tensor]) -> None:
        """Adapt to the subject before training: `rects` name -> [F, 4] regions of every frame, on the frames'
        device. Nothing by default."""

    @property
    def learns_from_errors(self) -> bool:
        """Whether `observe` uses the training rays' errors (callbacks.ray_errors feeds them only then)."""
        return False

    def observe(self, frame: Tensor, index: Tensor, error: Tensor, height: int, width: int) -> None:
        """The squared error [N] the step met at pixels `index` [N] of frame index `frame` ([1] long). Ignored by
        default."""

    def state_dict(self) -> dict[str, Any]:
        """What the sampler learnt while training (checkpointed with the data module); empty when it learns nothing."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore `state_dict()`'s state into a sampler fitted to the same subject."""

    def layouts(self) -> list[RaySampler]:
        """The samplers whose batches the step sees, in the order they take turns (one here)."""
        return [self]

    def next_layout(self) -> int:
        """Which of `layouts()` the next batch comes from, and move on (a graphed step replays that layout's graph)."""
        return 0


class RandomRaySampler(RaySampler):
    """`num_rays` random pixels (with replacement, as ER-NeRF); all pixels when the frame is smaller.

    Uniform over the image, or, with an `error_map`, partly drawn where the frame's earlier rays met the most error
    (datamodules/error_map.py; the map learns from the rays the step reports to `observe`)."""

    def __init__(self, num_rays: int, error_map: ErrorMap | None = None) -> None:
        self.num_rays, self.error_map = num_rays, error_map

    def __call__(self, height: int, width: int, rects: Mapping[str, Rect], generator: torch.Generator | None = None,
                 device: torch.device | str | None = None, frame: Tensor | None = None) -> PixelSample:
        count = height * width
        if self.num_rays >= count:
            return PixelSample(torch.randperm(count, generator=generator, device=device))
        if self.error_map is None:
            return PixelSample(torch.randint(0, count, (self.num_rays,), generator=generator, device=device))
        if frame is None:
            raise ErnerfError("an error-guided RandomRaySampler draws per frame: call it with the frame index.")
        index = self.error_map.draw(self.num_rays, height, width, frame, generator, device)
        weight = self.error_map.loss_weights(index, height, width, frame) if self.error_map.reweight else None
        return PixelSample(index, loss_weight=weight)

    def fit(self, rects: Mapping[str, Tensor]) -> None:
        if self.error_map is not None:
            self.error_map.fit(rects)

    @property
    def learns_from_errors(self) -> bool:
        return self.error_map is not None

    def observe(self, frame: Tensor, index: Tensor, error: Tensor, height: int, width: int) -> None:
        if self.error_map is not None:
            self.error_map.observe(frame, index, error, height, width)

    def state_dict(self) -> dict[str, Any]:
        return {} if self.error_map is None else {"error_map": self.error_map.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self.error_map is not None and "error_map" in state:
            self.error_map.load_state_dict(state["error_map"])


class PatchRaySampler(RaySampler):
    """One random `patch_size` x `patch_size` square of pixels (for patch losses such as LPIPS)."""

    def __init__(self, patch_size: int) -> None:
        self.patch_size = patch_size

    def __call__(self, height: int, width: int, rects: Mapping[str, Rect], generator: torch.Generator | None = None,
                 device: torch.device | str | None = None, frame: Tensor | None = None) -> PixelSample:
        size = min(self.patch_size, height, width)
        top = int(torch.randint(0, height - size + 1, (1,), generator=generator))  # host draws: no device sync
        left = int(torch.randint(0, width - size + 1, (1,), generator=generator))
        return PixelSample(rect_pixels(Rect(top, top + size, left, left + size), width, device), (size, size))


class RectRaySampler(RaySampler):
    """Every pixel of one named region of the frame (ER-NeRF's lips fine-tuning renders the lips square).

    size: None renders the region as it is in each frame (its size varies); an int, a square of that side centred on
    the region (moved inside the image), the same shape every step, so CUDA graphs can replay the step; "max", the
    largest side the region has in any frame of the subject (set by `fit`), so the square always holds it whole."""

    def __init__(self, region: str = "lips", size: int | str | None = None) -> None:
        if not (size is None or size == "max" or (isinstance(size, int) and size > 0)):
            raise ErnerfError(f"RectRaySampler size must be null, a positive number of pixels or 'max', got {size!r}.")
        self.region, self.size = region, size

    @property
    def fixed_shape(self) -> bool:
        return self.size is not None

    def fit(self, rects: Mapping[str, Tensor]) -> None:
        if self.size == "max":
            rect = self._region(rects)
            self.size = int(torch.maximum(rect[:, 1] - rect[:, 0], rect[:, 3] - rect[:, 2]).max())

    def __call__(self, height: int, width: int, rects: Mapping[str, Rect | Tensor],
                 generator: torch.Generator | None = None, device: torch.device | str | None = None,
                 frame: Tensor | None = None) -> PixelSample:
        rect = self._region(rects)
        if self.size is None:
            rect = rect if isinstance(rect, Rect) else Rect(*(int(v) for v in rect))  # (a device sync: eager only)
            return PixelSample(rect_pixels(rect, width, device), (rect.height, rect.width))
        if self.size == "max":
            raise ErnerfError("RectRaySampler(size='max') must be fitted to the subject first (the data module does).")
        size = min(self.size, height, width)
        return PixelSample(square_pixels(rect, size, height, width, device), (size, size))

    def _region(self, rects: Mapping[str, Rect | Tensor]) -> Rect | Tensor:
        if self.region not in rects:
            raise ErnerfError(f"ray sampler asks for region '{self.region}', the subject has {sorted(rects)}: set region to one of them.")
        return rects[self.region]


class AlternatingRaySampler(RaySampler):
    """Cycles through several samplers, one per call (ER-NeRF's lips stage alternates lips rect and random rays)."""

    def __init__(self, samplers: Sequence[RaySampler]) -> None:
        if not samplers:
            raise ErnerfError("AlternatingRaySampler needs at least one sampler: list them under `samplers`.")
        self.samplers = list(samplers)
        self.calls = 0

    @property
    def fixed_shape(self) -> bool:
        """Each turn's batches keep one shape (the step then has one graph per turn)."""
        return all(s.fixed_shape for s in self.samplers)

    def fit(self, rects: Mapping[str, Tensor]) -> None:
        for sampler in self.samplers:
            sampler.fit(rects)

    @property
    def learns_from_errors(self) -> bool:
        return any(s.learns_from_errors for s in self.samplers)

    def observe(self, frame: Tensor, index: Tensor, error: Tensor, height: int, width: int) -> None:
        """Every turn's sampler sees every batch's errors: an error map moves only the cells the rays fell in, so the
        rays of another turn (the lips square) are observations of those cells like its own."""
        for sampler in self.samplers:
            sampler.observe(frame, index, error, height, width)

    def state_dict(self) -> dict[str, Any]:
        """Each turn's sampler's state under its position in the turn order."""
        return {str(i): state for i, sampler in enumerate(self.samplers) if (state := sampler.state_dict())}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for i, sampler in enumerate(self.samplers):
            if str(i) in state:
                sampler.load_state_dict(state[str(i)])

    def layouts(self) -> list[RaySampler]:
        return list(self.samplers)

    def next_layout(self) -> int:
        turn = self.calls % len(self.samplers)
        self.calls += 1
        return turn

    def __call__(self, height: int, width: int, rects: Mapping[str, Rect | Tensor],
                 generator: torch.Generator | None = None, device: torch.device | str | None = None,
                 frame: Tensor | None = None) -> PixelSample:
        return self.samplers[self.next_layout()](height, width, rects, generator, device, frame)


class LipsRaySampler(AlternatingRaySampler):
    """ER-NeRF's lips fine-tuning: the whole lips square of the frame, then `num_rays` random rays, in turn.
    `size`: the lips square's side (RectRaySampler: None, pixels or "max"); `error_map`: the random turn's
    (RandomRaySampler)."""

    def __init__(self, num_rays: int, region: str = "lips", size: int | str | None = "max",
                 error_map: ErrorMap | None = None) -> None:
        super().__init__([RectRaySampler(region, size), RandomRaySampler(num_rays, error_map)])
        self.num_rays, self.region = num_rays, region


def rect_pixels(rect: Rect, width: int, device: torch.device | str | None = None) -> Tensor:
    """Flat ids [h * w] of a rectangle, row-major."""
    rows = torch.arange(rect.top, rect.bottom, device=device)
    cols = torch.arange(rect.left, rect.right, device=device)
    return (rows[:, None] * width + cols[None, :]).reshape(-1)


def square_pixels(rect: Rect | Tensor, size: int, height: int, width: int,
                  device: torch.device | str | None = None) -> Tensor:
    """Flat ids [size * size] of the `size` square centred on `rect` and moved inside the image, row-major. A [4]
    tensor rect stays on its device (no host sync: a CUDA graph can draw it)."""
    if isinstance(rect, Rect):
        rect = torch.tensor([rect.top, rect.bottom, rect.left, rect.right], device=device)
    centre_row, centre_col = (rect[0] + rect[1]) // 2, (rect[2] + rect[3]) // 2
    top = (centre_row - size // 2).clamp(0, height - size)
    left = (centre_col - size // 2).clamp(0, width - size)
    steps = torch.arange(size, device=rect.device)
    return ((top + steps)[:, None] * width + (left + steps)[None, :]).reshape(-1)
