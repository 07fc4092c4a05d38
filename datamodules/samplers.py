"""Ray samplers: which pixels of a training frame become rays (random, patches, the lips rectangle)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

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
    """Flat pixel ids [N] of one frame, and the (h, w) grid they form when they are patches (else None)."""

    index: Tensor
    patch_shape: tuple[int, int] | None = None


class RaySampler:
    """Base: picks flat pixel ids of an H x W frame; `rects` are the frame's named regions (face, lips...)."""

    def __call__(self, height: int, width: int, rects: Mapping[str, Rect], generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> PixelSample:
        """Pixel ids on `device` (where the frames are: drawing them there spares a host-to-device copy per step)."""
        raise NotImplementedError


class RandomRaySampler(RaySampler):
    """`num_rays` uniformly random pixels (with replacement, as ER-NeRF); all pixels when the frame is smaller."""

    def __init__(self, num_rays: int) -> None:
        self.num_rays = num_rays

    def __call__(self, height: int, width: int, rects: Mapping[str, Rect], generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> PixelSample:
        count = height * width
        if self.num_rays >= count:
            return PixelSample(torch.randperm(count, generator=generator, device=device))
        return PixelSample(torch.randint(0, count, (self.num_rays,), generator=generator, device=device))


class PatchRaySampler(RaySampler):
    """One random `patch_size` x `patch_size` square of pixels (for patch losses such as LPIPS)."""

    def __init__(self, patch_size: int) -> None:
        self.patch_size = patch_size

    def __call__(self, height: int, width: int, rects: Mapping[str, Rect], generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> PixelSample:
        size = min(self.patch_size, height, width)
        top = int(torch.randint(0, height - size + 1, (1,), generator=generator))  # host draws: no device sync
        left = int(torch.randint(0, width - size + 1, (1,), generator=generator))
        return PixelSample(rect_pixels(Rect(top, top + size, left, left + size), width, device), (size, size))


class RectRaySampler(RaySampler):
    """Every pixel of one named region of the frame (ER-NeRF's lips fine-tuning renders the lips square)."""

    def __init__(self, region: str = "lips") -> None:
        self.region = region

    def __call__(self, height: int, width: int, rects: Mapping[str, Rect], generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> PixelSample:
        if self.region not in rects:
            raise ErnerfError(f"ray sampler asks for region '{self.region}', the subject has {sorted(rects)}: set region to one of them.")
        rect = rects[self.region]
        return PixelSample(rect_pixels(rect, width, device), (rect.height, rect.width))


class AlternatingRaySampler(RaySampler):
    """Cycles through several samplers, one per call (ER-NeRF's lips stage alternates lips rect and random rays)."""

    def __init__(self, samplers: Sequence[RaySampler]) -> None:
        if not samplers:
            raise ErnerfError("AlternatingRaySampler needs at least one sampler: list them under `samplers`.")
        self.samplers = list(samplers)
        self.calls = 0

    def __call__(self, height: int, width: int, rects: Mapping[str, Rect], generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> PixelSample:
        sampler = self.samplers[self.calls % len(self.samplers)]
        self.calls += 1
        return sampler(height, width, rects, generator, device)


class LipsRaySampler(AlternatingRaySampler):
    """ER-NeRF's lips fine-tuning: the whole lips square of the frame, then `num_rays` random rays, in turn."""

    def __init__(self, num_rays: int, region: str = "lips") -> None:
        super().__init__([RectRaySampler(region), RandomRaySampler(num_rays)])
        self.num_rays, self.region = num_rays, region


def rect_pixels(rect: Rect, width: int, device: torch.device | str | None = None) -> Tensor:
    """Flat ids [h * w] of a rectangle, row-major."""
    rows = torch.arange(rect.top, rect.bottom, device=device)
    cols = torch.arange(rect.left, rect.right, device=device)
    return (rows[:, None] * width + cols[None, :]).reshape(-1)
