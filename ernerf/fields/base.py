"""What every field returns, and the building blocks fields share (MLP, truncated exponential)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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


def frame_code(codes: Tensor, frame_index: Tensor) -> Tensor:  # [F, C], [1] long -> [1, C]
    """Row `frame_index` of per-frame codes. The index is not range-checked here (on a GPU that would sync): it comes
    from the data module's training frames, or through `TalkingHeadSystem.frame_index`, which checks it."""
    return codes.index_select(0, frame_index)


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

    def forward_parts(self, parts: Sequence[Tensor], scales: Sequence[Tensor | None] = ()) -> Tensor:
        """`self(torch.cat([p * s for p, s in zip(parts, scales)], -1))` without building the concatenation.

        parts: [M, k_i], or [1, k_i] rows shared by all M points; scales: optional [1, k_i] rows (a frame's audio
        code times per-point attention). The first layer becomes a sum of products with column blocks of its
        weight, a scale folds into its block, and a shared row adds one [1, H] product: the [M, sum k_i] input
        (and each [M, k_i] product) is never written, which on a GPU was the slowest copy of the step."""
        weight = self[0].weight  # [H, sum k_i]
        scales = list(scales) + [None] * (len(parts) - len(scales))
        blocks, start = [], 0
        for part, scale in zip(parts, scales):
            block = weight[:, start : start + part.shape[-1]]  # [H, k_i]
            start += part.shape[-1]
            blocks.append(block if scale is None else block * scale.reshape(1, -1).to(block))
        if start != weight.shape[1]:
            raise ValueError(f"parts give {start} input features, the MLP takes {weight.shape[1]}")
        shared = None  # rows shared by every point: one [H] vector, added as the GEMM's bias (no [M, H] pass)
        for part, block in zip(parts, blocks):
            if part.shape[0] == 1:
                row = F.linear(part, block)[0]
                shared = row if shared is None else shared + row
        out = None
        for part, block in zip(parts, blocks):
            if part.shape[0] == 1:
                continue
            if out is None:
                out = F.linear(part, block) if shared is None else torch.addmm(shared, part, block.t())
            else:
                out = out.addmm_(part, block.t())  # accumulate in place: no copy of `out` first
        out = shared[None] if out is None else out
        for layer in list(self)[1:]:
            out = layer(out)
        return out
