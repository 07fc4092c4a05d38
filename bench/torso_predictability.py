"""How much of a subject's torso a model could predict on frames it never saw, from the data alone (no training).

    python bench/torso_predictability.py --subject data/trump              # at 128 px (the demo's downscale 4)
    python bench/torso_predictability.py --subject data/trump --downscale 1 --k 20

The torso stage renders held-out frames from the head pose alone (its per-frame code is the mean one there). When
the body moves on its own (breathing, shoulders, a sway), no field of the head pose can place the torso, and the
torso+neck error of the validation frames has a floor that no model change removes. This script scores simple
predictors of a frame's torso+neck pixels, built from the *training* frames' ground truth:

- `train mean`: the mean training image (what a torso field that ignores its conditioning converges to);
- `k nearest in head pose`: the mean of the k training frames whose head pose is nearest to the frame's. Scored on
  training frames too, with each frame's own neighbourhood in time (+-`--exclude` frames) left out, so that being
  next to the frame in time does not pass for being predicted by the pose.

- `k nearest in body`: the mean of the k training frames whose torso+neck silhouette (its parsing: centroid, spread
  and top edge, `body_signal`) is nearest to the frame's own. The parsing of every frame, held-out ones included, is
  an observation preprocessing makes, as the tracked head pose is: a torso conditioned on it would know where an
  unseen frame's body sits, which the head pose and a mean code do not.

A predictor that beats the train mean on the left-out training frames shows that the head pose carries the torso's
motion; one that does not shows that it does not, whatever the validation frames happen to give.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

from ernerf.io.layout import SubjectLayout
from ernerf.metrics.image import PSNR_CAP
from ernerf.preprocess.parsing import NECK, TORSO, read_parsing


def frames(layout: SubjectLayout, split: str) -> tuple[list[int], np.ndarray]:
    """Image ids and flattened [F, 12] camera-to-world rows of a split."""
    entries = json.loads(layout.transforms(split).read_text())["frames"]
    poses = np.stack([np.asarray(f["transform_matrix"], np.float64)[:3].ravel() for f in entries])
    return [int(f["img_id"]) for f in entries], poses


def load(layout: SubjectLayout, ids: list[int], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth images [F, S, S, 3] in [0, 1] (box-filtered as training reads them) and torso+neck masks [F, S, S]."""
    images, masks = [], []
    for i in ids:
        with Image.open(layout.gt(i)) as img:
            images.append(np.asarray(img.convert("RGB").resize((size, size), Image.Resampling.BOX), np.float32) / 255)
        labels = Image.fromarray(read_parsing(layout.parsing(i))).resize((size, size), Image.Resampling.NEAREST)
        masks.append(np.isin(np.asarray(labels), (TORSO, NECK)))
    return np.stack(images), np.stack(masks)


def psnr(predictions: list[np.ndarray], images: np.ndarray, masks: np.ndarray) -> float:
    """PSNR of the squared colour error pooled over the masked pixels of all frames (capped, as the project's
    metrics cap it: PSNR_CAP for identical pixels)."""
    errors = [((p - img) ** 2).mean(-1)[m] for p, img, m in zip(predictions, images, masks)]
    return -10 * math.log10(max(float(np.concatenate(errors).mean()), 10 ** (-PSNR_CAP / 10)))


def nearest_mean(train: np.ndarray, train_poses: np.ndarray, pose: np.ndarray, k: int,
                 excluded: slice | None = None) -> np.ndarray:
    """Mean of the k training images nearest to `pose` (squared distance of the c2w rows), `excluded` left out."""
    distance = ((train_poses - pose) ** 2).sum(1)
    if excluded is not None:
        distance[excluded] = np.inf
    return train[np.argsort(distance)[:k]].mean(0)


def body_signal(masks: np.ndarray) -> np.ndarray:
    """Where each frame's torso+neck sits, from its silhouette [F, S, S]: centroid, spread and the top edge of the
    middle third's columns, in image fractions -> [F, 5] standardised over the frames."""
    size = masks.shape[-1]
    rows, cols = np.mgrid[0:size, 0:size] / size
    area = masks.sum((1, 2)).clip(min=1)
    cy, cx = (masks * rows).sum((1, 2)) / area, (masks * cols).sum((1, 2)) / area
    sy = np.sqrt((masks * (rows - cy[:, None, None]) ** 2).sum((1, 2)) / area)
    sx = np.sqrt((masks * (cols - cx[:, None, None]) ** 2).sum((1, 2)) / area)
    middle = masks[:, :, size // 3: 2 * size // 3]
    top = np.where(middle.any(1), middle.argmax(1), size).mean(1) / size
    signal = np.stack([cx, cy, sx, sy, top], 1)
    return (signal - signal.mean(0)) / signal.std(0).clip(min=1e-6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subject", type=Path, required=True, help="a preprocessed subject folder")
    parser.add_argument("--downscale", type=int, default=4, help="images at 512 / downscale px, as training reads them")
    parser.add_argument("--k", type=int, nargs="+", default=[1, 5, 20], help="neighbours in head pose")
    parser.add_argument("--exclude", type=int, default=3, help="frames either side of a training frame left out")
    parser.add_argument("--every", type=int, default=5, help="score every n-th training frame")
    args = parser.parse_args()
    layout = SubjectLayout(args.subject)
    size = 512 // args.downscale
    train_ids, train_poses = frames(layout, "train")
    val_ids, val_poses = frames(layout, "val")
    train, train_masks = load(layout, train_ids, size)
    val, val_masks = load(layout, val_ids, size)
    held = list(range(0, len(train_ids), args.every))
    mean = train.mean(0)
    print(f"{args.subject.name}: torso+neck PSNR (dB) at {size} px, {len(val_ids)} validation frames, "
          f"{len(held)} training frames left out in turn (+-{args.exclude} frames)")
    print(f"  train mean: validation {psnr([mean] * len(val), val, val_masks):.2f}, "
          f"training {psnr([mean] * len(held), train[held], train_masks[held]):.2f}")
    signal = body_signal(np.concatenate([train_masks, val_masks]))
    for name, train_keys, val_keys in [("head pose", train_poses, val_poses),
                                       ("body", signal[: len(train)], signal[len(train):])]:
        for k in args.k:
            on_val = [nearest_mean(train, train_keys, key, k) for key in val_keys]
            on_train = [nearest_mean(train, train_keys, train_keys[f], k,
                                     slice(max(0, f - args.exclude), f + args.exclude + 1)) for f in held]
            print(f"  {k} nearest in {name}: validation {psnr(on_val, val, val_masks):.2f}, "
                  f"training {psnr(on_train, train[held], train_masks[held]):.2f}")


if __name__ == "__main__":
    main()
