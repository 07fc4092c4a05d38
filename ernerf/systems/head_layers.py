"""The frozen head of every training frame, rendered once, for the torso stage to composite its torso under.

In the torso stage the head (its field and audio encoder) is frozen, so what it puts in front of the torso at a
training frame's pixel never changes: its colour (already multiplied by its opacity) and its opacity. Marching the
head's rays again every step is most of that stage's GPU work; `HeadLayers` keeps them instead, one RGBA layer per
training frame, and a torso step looks its rays' pixels up. The layers are rendered as validation renders a frame:
sample bins at their centres and the frame's blink as tracked, where a step with the head marched jitters both; the
torso so learns under the head that inference composites over it. docs/performance.md, "The torso stage under the
frozen head's layers", says what they cost in memory and gain in speed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ernerf.progress import Enabled, progress_bar
from ernerf.rendering import RenderOutputs

log = logging.getLogger(__name__)

LAYER_DTYPE = torch.float16  # colour and opacity in [0, 1]: 11 bits of mantissa, half the memory of float32
CHANNELS = 4  # colour premultiplied by opacity (3), opacity (1)


class HeadLayers:
    """RGBA layers [F, H * W, 4] of the head of F training frames: premultiplied colour and opacity per pixel."""

    def __init__(self, layers: Tensor) -> None:
        if layers.ndim != 3 or layers.shape[-1] != CHANNELS:
            raise ValueError(f"head layers are [frames, pixels, {CHANNELS}], got {tuple(layers.shape)}")
        self.layers = layers
        self.flat = layers.view(-1, CHANNELS)

    @property
    def num_frames(self) -> int:
        return self.layers.shape[0]

    @property
    def nbytes(self) -> int:
        return self.layers.numel() * self.layers.element_size()

    def over(self, frame_index: Tensor, pixel_index: Tensor, bg: Tensor) -> RenderOutputs:
        """The head of frame index `frame_index` ([1] long) at pixels `pixel_index` [N] over `bg` [N, 3], as the
        marcher returns a render: one gather, no host sync (a CUDA graph replays it)."""
        texels = self.flat[frame_index * self.layers.shape[1] + pixel_index].float()  # [N, 4]
        colour, opacity = texels[:, :3], texels[:, 3]
        return RenderOutputs(rgb=colour + (1.0 - opacity)[:, None] * bg, depth=torch.zeros_like(opacity),
                             opacity=opacity, extras={}, samples_evaluated=0,
                             samples_occupied=torch.zeros((), dtype=torch.long, device=opacity.device))


def layer_bytes(num_frames: int, height: int, width: int) -> int:
    """Bytes the layers of `num_frames` frames of height x width take."""
    return num_frames * height * width * CHANNELS * torch.empty((), dtype=LAYER_DTYPE).element_size()


# frame number -> (c2w [4, 4], audio window [8, 16, C], eye [1]) of that training frame, on the model's device
FrameInputs = Callable[[int], tuple[Tensor, Tensor, Tensor]]
# (c2w, intrinsics, height, width, audio window, eye, frame number) -> RGBA [H, W, 4]: the head alone over black
HeadRender = Callable[[Tensor, Sequence[float], int, int, Tensor, Tensor, int], Tensor]


def render_head_layers(render_head: HeadRender, frame_inputs: FrameInputs, num_frames: int,
                       intrinsics: Sequence[float], height: int, width: int, device: torch.device,
                       progress: Enabled = "auto") -> HeadLayers:
    """Render the head of frames 0..num_frames-1 once (a bar with its ETA on a terminal) -> their layers."""
    layers = torch.empty(num_frames, height * width, CHANNELS, dtype=LAYER_DTYPE, device=device)
    with progress_bar(num_frames, "rendering the frozen head of each training frame", enabled=progress) as bar:
        for frame in range(num_frames):
            c2w, audio, eye = frame_inputs(frame)
            layers[frame] = render_head(c2w, intrinsics, height, width, audio, eye, frame).reshape(-1, CHANNELS)
            bar.update(1)
    return HeadLayers(layers)
