"""ER-NeRF's audio networks: a conv net over each 16-step feature window, and attention smoothing over frames."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ernerf.errors import ErnerfError

_SLOPE = 0.02  # LeakyReLU slope used throughout ER-NeRF's audio nets
# A channel that barely moves over the training clip (a band of near-silence at the floor) is not blown up into noise.
MIN_FEATURE_STD = 1e-2


def _conv_stack(channels: list[int], stride: int) -> nn.Sequential:
    """Conv1d(k=3) + LeakyReLU for each consecutive pair of channel counts."""
    layers: list[nn.Module] = []
    for c_in, c_out in zip(channels, channels[1:]):
        layers += [nn.Conv1d(c_in, c_out, kernel_size=3, stride=stride, padding=1), nn.LeakyReLU(_SLOPE)]
    return nn.Sequential(*layers)


class AudioNet(nn.Module):
    """Per-frame audio code: four stride-2 convs over the window (16 -> 1 steps), then a 2-layer MLP.

    With `input_norm`, each feature channel is first standardised with the mean and spread of the subject's training
    features (`fit_input_norm`; buffers, so they travel in checkpoints). ER-NeRF's nets were made for features near
    unit scale (DeepSpeech, HuBERT); log-mel rows arrive as log powers far from zero with a wide spread, so the first
    conv's output is mostly that offset and whether the audio path learns to open the mouth became a matter of seed.
    One affine map of the training statistics, the same for every utterance, keeps loudness as the subject spoke it."""

    def __init__(self, feature_dim: int, out_dim: int = 32, window: int = 16, input_norm: bool = False) -> None:
        super().__init__()
        self.feature_dim = feature_dim
        self.window = window
        self.input_norm = input_norm
        if input_norm:
            self.register_buffer("input_shift", torch.zeros(feature_dim))
            self.register_buffer("input_scale", torch.ones(feature_dim))
        self.conv = _conv_stack([feature_dim, 32, 32, 64, 64], stride=2)
        self.mlp = nn.Sequential(nn.Linear(64, 64), nn.LeakyReLU(_SLOPE), nn.Linear(64, out_dim))

    def forward(self, x: Tensor) -> Tensor:  # [B, T, C] (T >= window) -> [B, out_dim]
        """Encode the centre `window` steps of each feature window."""
        if x.ndim != 3 or x.shape[-1] != self.feature_dim:
            raise ErnerfError(
                f"audio features have shape {tuple(x.shape)} but AudioNet expects [B, {self.window}, "
                f"{self.feature_dim}]: select the audio_features config that produced this aud_<kind>.npy"
            )
        start = (x.shape[1] - self.window) // 2
        x = x[:, start : start + self.window]
        if self.input_norm:
            x = (x - self.input_shift) * self.input_scale
        h = self.conv(x.transpose(1, 2))  # [B, 64, ceil(window / 16)]
        return self.mlp(h.mean(-1))

    @torch.no_grad()
    def fit_input_norm(self, rows: Tensor, min_std: float = MIN_FEATURE_STD) -> None:
        """Standardise inputs with the per-channel mean and standard deviation of `rows` [..., feature_dim]."""
        if not self.input_norm:
            raise ErnerfError("fit_input_norm needs an AudioNet built with input_norm=True")
        rows = rows.reshape(-1, self.feature_dim).double()
        self.input_shift.copy_(rows.mean(0))
        self.input_scale.copy_(1.0 / rows.std(0).clamp_min(min_std))


class AudioAttNet(nn.Module):
    """Temporal attention over `seq_len` neighbouring frames' codes (ER-NeRF's lip smoothing)."""

    def __init__(self, dim: int = 32, seq_len: int = 8) -> None:
        super().__init__()
        self.seq_len = seq_len
        self.conv = _conv_stack([dim, 16, 8, 4, 2, 1], stride=1)
        self.attention = nn.Linear(seq_len, seq_len)

    def forward(self, codes: Tensor) -> Tensor:  # [B, seq_len, dim] -> [B, dim]
        """Weighted sum of the codes with softmax weights predicted from the whole sequence."""
        scores = self.conv(codes.transpose(1, 2))[:, 0]  # [B, seq_len]
        weights = torch.softmax(self.attention(scores), dim=-1)  # [B, seq_len]
        return (weights[..., None] * codes).sum(1)


class AudioEncoder(nn.Module):
    """AudioNet on each of the 8 neighbouring windows, then AudioAttNet to one code per frame."""

    def __init__(self, feature_dim: int, out_dim: int = 32, smooth_window: int = 8, input_norm: bool = False) -> None:
        super().__init__()
        self.feature_dim = feature_dim
        self.output_dim = out_dim
        self.net = AudioNet(feature_dim, out_dim, input_norm=input_norm)
        self.att = AudioAttNet(out_dim, smooth_window)

    @property
    def input_norm(self) -> bool:
        """Whether the per-frame net standardises its input (its own setting)."""
        return self.net.input_norm

    def fit_input_norm(self, rows: Tensor) -> None:
        """Standardise the feature channels with the statistics of the training features `rows` [..., C]."""
        self.net.fit_input_norm(rows)

    def forward(self, windows: Tensor, smooth: bool = True) -> Tensor:  # [B, S, 16, C] -> [B, out_dim]
        """Code of each frame; smooth=False uses only the centre window (before attention warm-up)."""
        if windows.ndim != 4:
            raise ErnerfError(f"AudioEncoder expects windows [B, 8, 16, C], got shape {tuple(windows.shape)}")
        batch, seq = windows.shape[:2]
        if not smooth:
            return self.net(windows[:, seq // 2])
        codes = self.net(windows.flatten(0, 1)).view(batch, seq, -1)  # [B, S, out_dim]
        return self.att(codes)
