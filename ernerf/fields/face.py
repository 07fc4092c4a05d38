"""ER-NeRF's face field: tri-plane features gate the audio and eye codes (region attention)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ernerf.encoders.frequency import SphericalHarmonicsEncoder
from ernerf.errors import ErnerfError
from ernerf.fields.base import MLP, FieldOutputs, frame_code, trunc_exp

INFERENCE_CODES = ("mean", "zero")


@dataclass
class FaceCondition:
    """What drives one frame: its audio code, eye (AU45) value and training-frame index. Frames rendered together
    have one row each ([B, ...]); the field is then told each point's frame (`groups`)."""

    audio: Tensor  # [audio_dim] code of the frame (AudioEncoder output), or [B, audio_dim]
    eye: Tensor | None = None  # [1] AU45, scaled, or [B, 1]; None = eyes open (0)
    frame_index: Tensor | None = None  # [1] or [B] long; None for frames not trained on (new audio): the mean code


class FaceField(nn.Module):
    """Dynamic head field: density and colour of points given audio, eye and per-frame codes."""

    def __init__(
        self,
        encoder: nn.Module,
        num_frames: int,
        audio_dim: int = 32,
        eye_dim: int = 1,
        individual_dim: int = 4,
        geo_feat_dim: int = 64,
        hidden_dim: int = 64,
        num_layers: int = 3,
        color_layers: int = 2,
        color_hidden_dim: int = 64,
        audio_att_hidden_dim: int = 64,
        eye_att_hidden_dim: int = 16,
        uncertainty_hidden_dim: int = 32,
        sh_degree: int = 4,
        inference_code: str = "mean",
    ) -> None:
        super().__init__()
        if inference_code not in INFERENCE_CODES:
            raise ErnerfError(f"inference_code must be one of {INFERENCE_CODES}, got {inference_code!r}")
        self.encoder = encoder
        self.audio_dim, self.eye_dim, self.inference_code = audio_dim, eye_dim, inference_code
        in_dim = encoder.output_dim
        # Region attention: where a point is decides how much each audio channel (and the eye) moves it.
        self.audio_att_net = MLP(in_dim, audio_dim, audio_att_hidden_dim, 2)
        self.eye_att_net = MLP(in_dim, 1, eye_att_hidden_dim, 2) if eye_dim > 0 else None
        self.sigma_net = MLP(in_dim + audio_dim + eye_dim, 1 + geo_feat_dim, hidden_dim, num_layers)
        self.dir_encoder = SphericalHarmonicsEncoder(sh_degree)
        color_in = self.dir_encoder.output_dim + geo_feat_dim + individual_dim
        self.color_net = MLP(color_in, 3, color_hidden_dim, color_layers)
        self.uncertainty_net = MLP(in_dim, 1, uncertainty_hidden_dim, 2)
        self.individual_codes = nn.Parameter(torch.randn(num_frames, individual_dim) * 0.1)

    def forward(self, x: Tensor, d: Tensor, cond: FaceCondition, extras: bool = True,
                groups: Tensor | None = None) -> FieldOutputs:  # x, d: [M, 3]; groups: [M] long
        """Density, colour, and (with `extras`, for the training losses) uncertainty and attention magnitudes at
        points x seen from directions d; `groups` picks each point's row of a condition of several frames."""
        enc_x = self.encoder(x)  # [M, in_dim]
        sigma, geo_feat, terms = self._density(enc_x, cond, extras, groups)
        code = per_point(self._individual_code(cond.frame_index), groups)  # [1 or M, individual_dim]
        rgb = torch.sigmoid(self.color_net.forward_parts([self.dir_encoder(d), geo_feat, code]))
        if extras:
            terms["uncertainty"] = F.softplus(self.uncertainty_net(enc_x))  # [M, 1], log(1 + e^u) as ER-NeRF
        return FieldOutputs(sigma=sigma, rgb=rgb, extras=terms)

    def density(self, x: Tensor, cond: FaceCondition) -> Tensor:  # [M, 3] -> [M]
        """Density only (for the occupancy grid)."""
        return self._density(self.encoder(x), cond, extras=False)[0]

    def _density(self, enc_x: Tensor, cond: FaceCondition, extras: bool = True,
                 groups: Tensor | None = None) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """sigma [M], geometric features [M, G] and (with `extras`) attention magnitudes from encoded points."""
        audio_att = self.audio_att_net(enc_x)  # [M, audio_dim]
        # sigma_net sees [enc_x, audio code * audio_att, eye * eye_att]; one frame's codes scale weight columns instead
        parts, scales = [enc_x], [None]
        _add_scaled(parts, scales, audio_att, self._audio(cond), groups)
        terms = {"audio_att": audio_att.norm(dim=-1, keepdim=True)} if extras else {}
        if self.eye_att_net is not None:
            eye_att = torch.sigmoid(self.eye_att_net(enc_x))  # [M, 1]
            _add_scaled(parts, scales, eye_att, self._eye(cond, enc_x), groups)
            if extras:
                terms["eye_att"] = eye_att
        h = self.sigma_net.forward_parts(parts, scales)
        return trunc_exp(h[:, 0]), h[:, 1:], terms

    def _audio(self, cond: FaceCondition) -> Tensor:  # -> [1 or B, audio_dim]
        """The frame's audio code as a row to broadcast over points (a row per frame of several)."""
        audio = cond.audio.reshape(-1, cond.audio.shape[-1])
        if audio.shape[1] != self.audio_dim:
            raise ErnerfError(
                f"audio code has {audio.shape[1]} channels but FaceField was built with audio_dim={self.audio_dim}; "
                "set the field's audio_dim to the AudioEncoder's out_dim"
            )
        return audio

    def _eye(self, cond: FaceCondition, like: Tensor) -> Tensor:  # -> [1 or B, eye_dim]
        """The frame's eye value (a row per frame of several); eyes open (zero) when none is given."""
        if cond.eye is None:
            return like.new_zeros(1, self.eye_dim)
        return cond.eye.reshape(-1, self.eye_dim).to(like)

    def _individual_code(self, frame_index: Tensor | None) -> Tensor:  # [1] or [B] long -> [1 or B, individual_dim]
        """Learned code of a training frame; the mean (or zero) code for unseen frames."""
        codes = self.individual_codes
        if frame_index is None:
            return codes.mean(0, keepdim=True) if self.inference_code == "mean" else codes.new_zeros(1, codes.shape[1])
        return frame_code(codes, frame_index)


def per_point(rows: Tensor, groups: Tensor | None) -> Tensor:  # [1 or B, k], [M] -> [1 or M, k]
    """Each point's row of a per-frame condition; one row stays one row, shared by every point."""
    return rows if groups is None or rows.shape[0] == 1 else rows[groups]


def _add_scaled(parts: list[Tensor], scales: list[Tensor | None], part: Tensor, rows: Tensor,
                groups: Tensor | None) -> None:
    """Append `part` [M, k] times its frame's row of `rows` [1 or B, k] as an MLP input: one row scales the
    weight columns (no [M, k] product is written); rows of several frames are multiplied in per point."""
    if groups is None or rows.shape[0] == 1:
        parts.append(part)
        scales.append(rows)
    else:
        parts.append(part * rows[groups].to(part))
        scales.append(None)
