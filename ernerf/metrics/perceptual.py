"""LPIPS when its backbone weights are on this machine; otherwise the reason it is unavailable (never a download)."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

# torchvision's ImageNet weight files that torchmetrics' LPIPS backbones load.
BACKBONE_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth", "squeeze": "squeezenet1_1-b8a52dc0.pth"}
ALEX_SLICES = ((0, 2), (2, 5), (5, 8), (8, 10), (10, 12))  # torchvision alexnet.features index ranges per LPIPS slice

LpipsFn = Callable[[np.ndarray, np.ndarray], float]


def cached_backbone(net: str) -> Path:
    """Where torchvision would have cached the backbone's weights (`$TORCH_HOME/hub/checkpoints/`)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / BACKBONE_FILES[net]


def lpips_scorer(net: str = "alex", weights: str | Path | None = None) -> tuple[LpipsFn | None, str | None]:
    """(score(pred, target) -> LPIPS of two uint8 [H, W, 3] images, None) or (None, why it is unavailable)."""
    if net not in BACKBONE_FILES:
        return None, f"unknown LPIPS net '{net}': use one of {', '.join(BACKBONE_FILES)}"
    if importlib.util.find_spec("torchvision") is None:
        return None, ("torchvision is not installed (torchmetrics' LPIPS builds its backbone with it): "
                      "`pip install torchvision` and give lpips.weights=<" + BACKBONE_FILES[net] + ">")
    path = Path(weights) if weights else cached_backbone(net)
    if not path.is_file():
        return None, (f"no {net} backbone weights at {path}: download {BACKBONE_FILES[net]} once and give "
                      "lpips.weights=<path> (evaluation never downloads)")
    if net != "alex" and weights:
        return None, "lpips.weights= is supported for net=alex; for other nets put the file in the torch hub cache"
    return _build(net, path, explicit=bool(weights)), None


def _build(net: str, path: Path, explicit: bool) -> LpipsFn:
    """torchmetrics' LPIPS with the backbone loaded from `path` (its linear heads ship with torchmetrics)."""
    from torchmetrics.functional.image.lpips import _NoTrainLpips

    model = _NoTrainLpips(net=net, pnet_rand=explicit)  # pnet_rand: build the backbone without fetching weights
    if explicit:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.net.load_state_dict(alexnet_to_lpips_slices(state))
    model.eval()

    def score(pred: np.ndarray, target: np.ndarray) -> float:
        with torch.no_grad():
            return float(model(_signed(pred), _signed(target)).mean())

    return score


def _signed(img: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] -> [1, 3, H, W] in [-1, 1], as LPIPS expects."""
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 127.5 - 1.0


def alexnet_to_lpips_slices(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision alexnet keys `features.<i>.<p>` -> LPIPS backbone keys `slice<k>.<i>.<p>`."""
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] != "features":
            continue
        index = int(parts[1])
        k = next(n for n, (lo, hi) in enumerate(ALEX_SLICES, start=1) if lo <= index < hi)
        out[f"slice{k}.{index}.{parts[2]}"] = value
    return out
