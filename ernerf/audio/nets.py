"""ER-NeRF's audio networks: a conv net over each 16-step feature window, and attention smoothing over frames."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ernerf.errors import ErnerfError

_SLOPE = 0.02  # LeakyReLU slope used throughout ER-NeRF's audio nets


def _conv_stack(channels: list[int], stride: int) -> nn.Sequential:
    """Conv1d(k=3) + LeakyReLU for each consecutive pair of channel counts."""
    layers: list[nn.Module] = []
    for c_in, c_out in zip(channels, channels[1:]):
        layers += [nn.Conv1d(c_in, c_out, kernel_size=3, stride=stride, padding=1), nn.LeakyReLU(_SLOPE)]
    return nn.Sequential(*layers)


class AudioNet(nn.Module):
    """Per-frame audio code: four stride-2 convs over the window (16 -> 1 steps), then a 2-layer MLP."""

    def __init__(self, feature_dim: int, out_dim: int = 32, window: int = 16) -> None:
        super().__init__()
        self.feature_dim = feature_dim
        self.window = window
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
        h = self.conv(x[:, start : start + self.window].transpose(1, 2))  # [B, 64, ceil(window / 16)]
        return self.mlp(h.mean(-1))


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

    def __init__(self, feature_dim: int, out_dim: int = 32, smooth_window: int = 8) -> None:
        super().__init__()
        self.feature_dim = feature_dim
        self.output_dim = out_dim
        self.net = AudioNet(feature_dim, out_dim)
        self.att = AudioAttNet(out_dim, smooth_window)

    def forward(self, windows: Tensor, smooth: bool = True) -> Tensor:  # [B, S, 16, C] -> [B, out_dim]
        """Code of each frame; smooth=False uses only the centre window (before attention warm-up)."""
        if windows.ndim != 4:
            raise ErnerfError(f"AudioEncoder expects windows [B, 8, 16, C], got shape {tuple(windows.shape)}")
        batch, seq = windows.shape[:2]
        if not smooth:
            return self.net(windows[:, seq // 2])
        codes = self.net(windows.flatten(0, 1)).view(batch, seq, -1)  # [B, S, out_dim]
        return self.att(codes)
