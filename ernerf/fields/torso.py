"""ER-NeRF's torso field: a 2D image-plane field driven by the head pose (adaptive pose encoding)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ernerf.encoders.frequency import FrequencyEncoder
from ernerf.encoders.hashgrid import HashGridEncoder
from ernerf.fields.base import MLP, frame_code

# ER-NeRF's three anchors in the head's (model) space: below and in front of the head, where the neck meets it.
DEFAULT_ANCHORS = ((0.01, 0.01, 0.1), (-0.1, -0.1, 0.1), (0.1, -0.1, 0.1))


@dataclass
class TorsoOutputs:
    """Per-pixel torso outputs."""

    rgb: Tensor  # [N, 3] in [0, 1]
    alpha: Tensor  # [N, 1] in [0, 1]
    deform: Tensor  # [N, 2] image-plane offset the deformation net applied


def pose_keypoints(anchors: Tensor, c2w: Tensor) -> Tensor:  # [K, 3], [4, 4] -> [K, 2]
    """Anchors seen by the camera: head space -> camera space by the inverse c2w, then divided by depth.

    c2w is rigid (tracking's rotation, axes permuted and flipped by nerf_matrix_to_ngp), so its inverse is
    [R^T | -R^T t]: no torch.linalg.inv, whose CUDA version syncs with the host (and so cannot sit in a CUDA graph)."""
    c2w = c2w.float()
    cam = (anchors - c2w[:3, 3]) @ c2w[:3, :3]  # [K, 3] rows: R^T (a - t)
    return cam[:, :2] / cam[:, 2:].clamp_min(1e-6)


def pixel_coords(index: Tensor, height: int, width: int) -> Tensor:  # [N] flat ids -> [N, 2] in [-1, 1]
    """Pixel centres of flat row-major ids as (x, y) in [-1, 1] over the image."""
    rows = torch.div(index, width, rounding_mode="floor").float()
    cols = (index % width).float()
    return torch.stack([(cols + 0.5) / width * 2 - 1, (rows + 0.5) / height * 2 - 1], dim=-1)


class TorsoField(nn.Module):
    """Torso colour and alpha on the image plane, deformed by the frame's head pose and a per-frame code."""

    def __init__(
        self,
        num_frames: int,
        individual_dim: int = 8,
        anchors: Sequence[Sequence[float]] = DEFAULT_ANCHORS,
        coord_freqs: int = 8,
        pose_freqs: int = 3,
        hidden_dim: int = 32,
        num_layers: int = 3,
        num_levels: int = 16,
        level_dim: int = 2,
        base_resolution: int = 16,
        desired_resolution: int = 2048,
        log2_hashmap_size: int = 16,
        shrink: float = 0.8,
        backend: str = "torch",
    ) -> None:
        super().__init__()
        # Learnable, as in ER-NeRF: the anchors settle where the pose best explains the torso.
        self.anchors = nn.Parameter(torch.tensor([list(a) for a in anchors], dtype=torch.float32))  # [K, 3]
        self.shrink = shrink  # ER-NeRF shrinks image coordinates so the grid has margin for the deformation
        self.coord_encoder = FrequencyEncoder(2, coord_freqs)
        self.pose_encoder = FrequencyEncoder(2 * self.anchors.shape[0], pose_freqs)
        cond_dim = self.coord_encoder.output_dim + self.pose_encoder.output_dim + individual_dim
        self.deform_net = MLP(cond_dim, 2, hidden_dim, num_layers)
        self.grid = HashGridEncoder(2, num_levels, level_dim, base_resolution, desired_resolution, log2_hashmap_size,
                                    bound=1.0, backend=backend)
        self.color_net = MLP(self.grid.output_dim + cond_dim, 4, hidden_dim, num_layers)
        self.individual_codes = nn.Parameter(torch.randn(num_frames, individual_dim) * 0.1)
        # Codes of frames after the training frames (row i: frame num_frames + i), fitted to those frames' images
        # once the field is trained (ernerf/apps/torso_fit.py). Not saved: they belong to a subject's held-out frames.
        self.register_buffer("fitted_codes", torch.zeros(0, individual_dim), persistent=False)

    def forward(self, coords: Tensor, c2w: Tensor, frame_index: Tensor | None) -> TorsoOutputs:  # [N, 2] in [-1, 1]
        """Colour, alpha and deformation of image points `coords` for a frame seen by camera `c2w` [4, 4]."""
        return self.draw(coords, c2w, self.code(frame_index))

    def draw(self, coords: Tensor, c2w: Tensor, code: Tensor) -> TorsoOutputs:  # [N, 2], [4, 4], [1, individual_dim]
        """`forward` with the frame's torso code given rather than looked up (a code being fitted)."""
        x = coords.float() * self.shrink
        keypoints = pose_keypoints(self.anchors, c2w.to(x)).reshape(1, -1)  # [1, 2K]
        frame_cond = torch.cat([self.pose_encoder(keypoints), code.to(x)], -1)  # [1, P + I]
        coord = self.coord_encoder(x)  # [N, C]; the MLPs see [coord, frame_cond] without it being copied N times
        deform = self.deform_net.forward_parts([coord, frame_cond])  # [N, 2]
        h = self.color_net.forward_parts([self.grid((x + deform).clamp(-1, 1)), coord, frame_cond])
        squash = torch.sigmoid(h) * 1.002 - 0.001  # ER-NeRF: lets alpha reach exactly 0 and 1
        return TorsoOutputs(rgb=squash[:, 1:].clamp(0, 1), alpha=squash[:, :1].clamp(0, 1), deform=deform)

    def code(self, frame_index: Tensor | None) -> Tensor:  # [1] long -> [1, individual_dim]
        """A frame's torso code (a training frame's, or a fitted one after them); the mean code for new frames."""
        if frame_index is None:
            return self.individual_codes.mean(0, keepdim=True)
        if len(self.fitted_codes):
            return frame_code(torch.cat([self.individual_codes, self.fitted_codes]), frame_index)
        return frame_code(self.individual_codes, frame_index)

    @property
    def num_coded(self) -> int:
        """Frames with a code of their own: the training frames and those after them whose codes were fitted."""
        return len(self.individual_codes) + len(self.fitted_codes)

    def use_fitted_codes(self, codes: Tensor) -> None:
        """Give frames num_frames .. num_frames + len(codes) - 1 these codes [F, individual_dim]."""
        self.fitted_codes = codes.detach().to(self.individual_codes)
