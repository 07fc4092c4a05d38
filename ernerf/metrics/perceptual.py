"""LPIPS when its backbone weights are on this machine; otherwise the reason it is unavailable (never a download)."""

from __future__ import annotations

import contextlib
import importlib.util
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

# torchvision's ImageNet weight files that torchmetrics' LPIPS backbones load.
BACKBONE_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth", "squeeze": "squeezenet1_1-b8a52dc0.pth"}

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
    metric = lpips_metric(net, path).eval()

    def score(pred: np.ndarray, target: np.ndarray) -> float:
        with torch.no_grad():
            value = metric(_signed(pred), _signed(target))
        metric.reset()
        return float(value)

    return score, None


def lpips_metric(net: str, weights: Path) -> Any:
    """torchmetrics' LPIPS (its public class; inputs in [-1, 1]) whose backbone loads from the local file `weights`.

    torchvision fetches a backbone from the torch hub cache when it is there, under the name its download would give
    it, and downloads it otherwise; the file is put under that name in a private hub folder for the construction, so
    whatever the user's cache holds, nothing is downloaded and `weights` is what loads.
    """
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    with local_backbone(net, weights):
        return LearnedPerceptualImagePatchSimilarity(net_type=net, normalize=False)


@contextlib.contextmanager
def local_backbone(net: str, weights: Path) -> Iterator[Path]:
    """Point torch's hub folder at a temporary one that holds `weights` as torchvision's file for `net`."""
    previous = torch.hub.get_dir()
    with tempfile.TemporaryDirectory(prefix="ernerf-hub-") as hub:
        checkpoints = Path(hub) / "checkpoints"
        checkpoints.mkdir()
        (checkpoints / BACKBONE_FILES[net]).symlink_to(Path(weights).resolve())
        torch.hub.set_dir(hub)
        try:
            yield checkpoints / BACKBONE_FILES[net]
        finally:
            torch.hub.set_dir(previous)


def _signed(img: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] -> [1, 3, H, W] in [-1, 1], as LPIPS expects."""
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 127.5 - 1.0
