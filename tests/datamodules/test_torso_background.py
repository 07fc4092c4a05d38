"""The torso background (torso image over the plate) is, bit for bit, ER-NeRF's float formula over every pixel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datamodules.subject import FrameStore, parse_subject, torso_over_plate
from ernerf.io.layout import SubjectLayout
from tests.synthetic import write_synthetic_subject

TRAIN_CLIPS = ["train/trump_10s.mp4", "train/hdtf_aoc_8s.mp4"]


def reference_background(rgba: np.ndarray, plate: np.ndarray) -> np.ndarray:
    """What FrameStore._load_background computed before it was optimised: the formula over the whole frame."""
    rgba = rgba.astype(np.float32)
    alpha = rgba[..., 3:] / 255
    mixed = rgba[..., :3] * alpha + plate.astype(np.float32) * (1 - alpha)
    return np.round(mixed).astype(np.uint8)


def read_at(path: Path, mode: str, size: tuple[int, int] | None) -> Image.Image:
    """An image as FrameStore reads it: converted, and box-filtered to `size` (a downscale) when given."""
    with Image.open(path) as img:
        image = img.convert(mode)
    return image.resize(size, Image.Resampling.BOX) if size and size != image.size else image


def assert_same_background(torso: Image.Image, plate: Image.Image) -> None:
    expected = reference_background(np.asarray(torso), np.asarray(plate))
    got = torso_over_plate(torso, plate, np.asarray(plate).astype(np.float32))
    assert got.dtype == np.uint8 and np.array_equal(got, expected)


@pytest.fixture(scope="module", params=TRAIN_CLIPS)
def composited(request, prepare_subject) -> SubjectLayout:
    return SubjectLayout(prepare_subject(request.param, upto="composite"))


@pytest.mark.parametrize("downscale", [1, 2])
def test_real_torso_frames_give_the_formulas_bits(composited: SubjectLayout, downscale: int) -> None:
    """Every 3rd frame of both clips; halved, the box filter gives the torso edges alpha between 0 and 255."""
    full = Image.open(composited.background).size
    size = (full[0] // downscale, full[1] // downscale)
    plate = read_at(composited.background, "RGB", size)
    frames = sorted(int(p.stem) for p in composited.torso_dir.glob("*.png"))[::3]
    soft = 0
    for i in frames:
        torso = read_at(composited.torso(i), "RGBA", size)
        alpha = np.asarray(torso)[..., 3]
        soft += np.count_nonzero((alpha > 0) & (alpha < 255))
        assert_same_background(torso, plate)
    assert len(frames) > 50
    assert (soft > 0) == (downscale > 1)  # preprocessing writes alpha 0 or 255 only; the halving blends the edges


@pytest.mark.parametrize("soft_share", [0.0, 0.01, 0.2, 0.5, 1.0])
def test_any_alpha_gives_the_formulas_bits(soft_share: float) -> None:
    """Every alpha value, on few pixels (computed one by one) or most of them (the whole frame's formula)."""
    rng = np.random.default_rng(int(soft_share * 100))
    rgba = rng.integers(0, 256, (96, 128, 4), dtype=np.uint8)
    hard = rng.random((96, 128)) >= soft_share
    rgba[..., 3][hard] = rng.choice(np.array([0, 255], np.uint8), int(hard.sum()))
    plate = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
    assert_same_background(Image.fromarray(rgba, "RGBA"), Image.fromarray(plate))


def test_the_frame_store_background_is_the_formulas(tmp_path: Path) -> None:
    """FrameStore._load_background (preloading for training, inference's backgrounds) on torso images of every alpha."""
    root = write_synthetic_subject(tmp_path / "sphere", num_frames=4, size=32)
    layout, rng = SubjectLayout(root), np.random.default_rng(0)
    for i in range(4):
        rgba = rng.integers(0, 256, (32, 32, 4), dtype=np.uint8)
        rgba[:16, :, 3] = rng.choice(np.array([0, 255], np.uint8), (16, 32))
        Image.fromarray(rgba, "RGBA").save(layout.torso(i))
    store = FrameStore(parse_subject(root, "aud_mel.npy"), background="torso")
    plate = np.asarray(read_at(layout.background, "RGB", None))
    for frame in range(store.data.num_frames):
        rgba = np.asarray(read_at(layout.torso(int(store.data.img_ids[frame])), "RGBA", None))
        assert np.array_equal(store.background(frame).numpy(), reference_background(rgba, plate))
