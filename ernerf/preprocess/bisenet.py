"""BiSeNet face parsing (Yu et al., 2018, ResNet-18 context path) for user-supplied weights.

ER-NeRF parses frames with a BiSeNet trained on CelebAMask-HQ's 19 classes. This module builds
that network with the parameter names of the widely shared face-parsing checkpoint, so a local
copy of it loads as is, and maps its classes onto ER-NeRF's head / neck / torso / background.
No weights ship with the project and none are downloaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ernerf.errors import ErnerfError

NUM_CLASSES = 19
# CelebAMask-HQ order: 0 background, 1 skin, 2-3 brows, 4-5 eyes, 6 glasses, 7-8 ears, 9 earring,
# 10 nose, 11 mouth, 12-13 lips, 14 neck, 15 necklace, 16 cloth, 17 hair, 18 hat
_HEAD, _NECK, _TORSO = 1, 2, 3  # ernerf.preprocess.parsing labels (not imported: avoids a cycle)
CELEBA_TO_ERNERF = np.array([0] + [_HEAD] * 13 + [_NECK, _NECK, _TORSO, _HEAD, _HEAD], np.uint8)
_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)  # ImageNet statistics the model was trained with
_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


class ConvBNReLU(nn.Module):
    """Convolution without bias, batch norm, ReLU."""

    def __init__(self, cin: int, cout: int, ks: int = 3, stride: int = 1, padding: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, ks, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convolutions with a (projected) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if cin != cout or stride != 1:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class ResNet18(nn.Module):
    """ResNet-18 trunk returning features at strides 8, 16 and 32."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(BasicBlock(64, 64), BasicBlock(64, 64))
        self.layer2 = nn.Sequential(BasicBlock(64, 128, 2), BasicBlock(128, 128))
        self.layer3 = nn.Sequential(BasicBlock(128, 256, 2), BasicBlock(256, 256))
        self.layer4 = nn.Sequential(BasicBlock(256, 512, 2), BasicBlock(512, 512))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        feat8 = self.layer2(self.layer1(x))
        feat16 = self.layer3(feat8)
        return feat8, feat16, self.layer4(feat16)


class AttentionRefinementModule(nn.Module):
    """Channel attention from the global average of the features."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(cin, cout)
        self.conv_atten = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv(x)
        atten = torch.sigmoid(self.bn_atten(self.conv_atten(feat.mean((2, 3), keepdim=True))))
        return feat * atten


class ContextPath(nn.Module):
    """ResNet-18 with attention refinement at strides 16 and 32 and a global context term."""

    def __init__(self) -> None:
        super().__init__()
        self.resnet = ResNet18()
        self.arm16 = AttentionRefinementModule(256, 128)
        self.arm32 = AttentionRefinementModule(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128)
        self.conv_head16 = ConvBNReLU(128, 128)
        self.conv_avg = ConvBNReLU(512, 128, ks=1, padding=0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat8, feat16, feat32 = self.resnet(x)
        context = self.conv_avg(feat32.mean((2, 3), keepdim=True))
        up32 = F.interpolate(self.arm32(feat32) + context, size=feat16.shape[2:], mode="nearest")
        up32 = self.conv_head32(up32)
        up16 = F.interpolate(self.arm16(feat16) + up32, size=feat8.shape[2:], mode="nearest")
        return feat8, self.conv_head16(up16)


class FeatureFusionModule(nn.Module):
    """Fuse spatial and context features with a squeeze-excite style gate."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.convblk = ConvBNReLU(cin, cout, ks=1, padding=0)
        self.conv1 = nn.Conv2d(cout, cout // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(cout // 4, cout, 1, bias=False)

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        feat = self.convblk(torch.cat([spatial, context], dim=1))
        atten = torch.sigmoid(self.conv2(F.relu(self.conv1(feat.mean((2, 3), keepdim=True)))))
        return feat + feat * atten


class BiSeNetOutput(nn.Module):
    """3x3 ConvBNReLU then 1x1 class logits."""

    def __init__(self, cin: int, mid: int, n_classes: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(cin, mid)
        self.conv_out = nn.Conv2d(mid, n_classes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """Face-parsing BiSeNet: [B, 3, H, W] normalised RGB -> [B, n_classes, H, W] logits.

    The stride-8 ResNet features stand in for the spatial path (as in the face-parsing model);
    the auxiliary heads exist only so that training checkpoints load without missing keys.
    """

    def __init__(self, n_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.cp = ContextPath()
        self.ffm = FeatureFusionModule(256, 256)
        self.conv_out = BiSeNetOutput(256, 256, n_classes)
        self.conv_out16 = BiSeNetOutput(128, 64, n_classes)
        self.conv_out32 = BiSeNetOutput(128, 64, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial, context = self.cp(x)
        logits = self.conv_out(self.ffm(spatial, context))
        return F.interpolate(logits, size=x.shape[2:], mode="bilinear", align_corners=True)


_KEY = "preprocess.steps.parsing.bisenet_weights"


def check_weights_path(path: Path | str | None) -> Path:
    """The checkpoint path, or an ErnerfError naming the config key when it is unset or missing."""
    if not path:
        raise ErnerfError(f"parsing backend 'bisenet' needs weights: set {_KEY}=<path to the face-parsing .pth> "
                          "(e.g. 79999_iter.pth), or use preprocess.steps.parsing.backend=mediapipe.")
    path = Path(path).expanduser()
    if not path.is_file():
        raise ErnerfError(f"{_KEY}={path} does not exist: point it at a local BiSeNet face-parsing checkpoint "
                          "(nothing is downloaded), or use preprocess.steps.parsing.backend=mediapipe.")
    return path


def load_bisenet(path: Path | str | None) -> BiSeNet:
    """Build BiSeNet and load a local checkpoint (a state dict, optionally saved from DataParallel)."""
    path = check_weights_path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k.removeprefix("module."): v for k, v in dict(state).items()}
        net = BiSeNet()
        missing, _ = net.load_state_dict(state, strict=False)
    except Exception as exc:  # noqa: BLE001 - unreadable file, not a state dict, wrong shapes: one user error
        raise ErnerfError(f"{_KEY}={path} is not a 19-class BiSeNet face-parsing state dict "
                          f"({exc.__class__.__name__}: {str(exc)[:200]}).") from exc
    if missing:
        raise ErnerfError(f"{_KEY}={path} is not a 19-class BiSeNet face-parsing checkpoint: "
                          f"{len(missing)} parameters missing (e.g. {missing[:3]}).")
    return net.eval()


class BiSeNetParser:
    """Frames -> ER-NeRF labels (background / head / neck / torso) with a BiSeNet face parser."""

    def __init__(self, weights: Path | str | None, size: int = 512, threads: int = 2) -> None:
        self.net = load_bisenet(weights)
        self.size, self.threads = size, threads

    @torch.inference_mode()
    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """[B, H, W, 3] uint8 RGB -> [B, H, W] uint8 labels."""
        torch.set_num_threads(self.threads)
        h, w = rgb.shape[1:3]
        x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(0, 3, 1, 2).float() / 255.0
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        logits = self.net((x - _MEAN) / _STD)
        logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        return CELEBA_TO_ERNERF[logits.argmax(1).numpy()]
