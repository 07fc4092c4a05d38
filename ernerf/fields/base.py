"""What every field returns, and the building blocks fields share (MLP, truncated exponential)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ernerf.errors import ErnerfError


@dataclass
class FieldOutputs:
    """Per-sample field outputs; `extras` are [M, k] quantities the marcher composites like colour."""

    sigma: Tensor  # [M] >= 0
    rgb: Tensor  # [M, 3] in [0, 1]
    extras: dict[str, Tensor] = field(default_factory=dict)  # name -> [M, k]


class _TruncExp(torch.autograd.Function):
    """exp(x) whose gradient uses exp(clamp(x)) so large densities do not blow up (torch-ngp's trick)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # noqa: D102 - autograd plumbing
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: D102 - autograd plumbing
        (x,) = ctx.saved_tensors
        return grad * torch.exp(x.clamp(-15.0, 15.0))


def trunc_exp(x: Tensor) -> Tensor:
    """Density activation: exp in the forward pass, gradient clamped at |x| = 15."""
    return _TruncExp.apply(x)


def frame_code(codes: Tensor, frame_index: int | Tensor, owner: str) -> Tensor:  # [F, C] -> [1, C]
    """Row `frame_index` of per-frame codes. A tensor index (a CUDA graph's input) is not range-checked here:
    the data module only produces training frames."""
    if isinstance(frame_index, Tensor):
        return codes.index_select(0, frame_index.reshape(1))
    if not 0 <= frame_index < codes.shape[0]:
        raise ErnerfError(f"frame_index {frame_index} is outside the {codes.shape[0]} training frames of the {owner}; "
                          "pass frame_index=None for new audio")
    return codes[frame_index : frame_index + 1]


class MLP(nn.Sequential):
    """Bias-free Linear layers with ReLU between them (ER-NeRF's MLP); no activation on the output."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, num_layers: int) -> None:
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims, dims[1:])):
            layers.append(nn.Linear(a, b, bias=False))
            if i < num_layers - 1:
                layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)
