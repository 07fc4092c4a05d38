"""Weighted sum of named loss terms, with optional linear ramps, and the values to log."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from ernerf.errors import ErnerfError


class LossComposer:
    """total = sum_name weight[name] * ramp[name](step) * term[name]; weights and ramps come from config."""

    def __init__(self, weights: Mapping[str, float], ramps: Mapping[str, int] | None = None) -> None:
        self.weights = {name: float(w) for name, w in weights.items()}
        self.ramps = {name: int(steps) for name, steps in (ramps or {}).items()}
        unknown = set(self.ramps) - set(self.weights)
        if unknown:
            raise ErnerfError(f"loss ramps name terms without a weight: {sorted(unknown)}; add them to loss weights")

    def active(self, name: str) -> bool:
        """Whether a term has a non-zero weight (so the caller can skip computing it)."""
        return self.weights.get(name, 0.0) != 0.0

    def weight(self, name: str, step: Tensor | None = None, dtype: torch.dtype = torch.float32) -> float | Tensor:
        """Weight of a term at training step `step`, ramped linearly from 0 over `ramps[name]` steps.

        `step` is a 0-dim tensor: a float64 on the host in an eager step, a device scalar in a CUDA graph. A ramped
        weight comes back in `dtype` (the term's): a 0-dim float64 weight would make the product float64, where the
        number it stands for keeps the term's dtype."""
        ramp = self.ramps.get(name, 0)
        if step is None or ramp <= 0:
            return self.weights[name]
        return (self.weights[name] * (step / ramp).clamp(max=1.0)).to(dtype)

    def __call__(self, terms: Mapping[str, Tensor], step: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """(total loss, {name: detached unweighted value}) for the given terms at training step `step`."""
        unknown = set(terms) - set(self.weights)
        if unknown:
            raise ErnerfError(
                f"loss terms {sorted(unknown)} have no weight; add them under loss weights (0 disables a term)"
            )
        if not terms:
            raise ErnerfError("no loss terms were computed: give at least one term a non-zero weight")
        total = sum(self.weight(name, step, value.dtype) * value for name, value in terms.items())
        return torch.as_tensor(total), {name: value.detach() for name, value in terms.items()}
