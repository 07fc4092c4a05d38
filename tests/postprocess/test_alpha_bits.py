"""Paste-back alpha masks are, bit for bit, what the plain code gave: cv2.imread's BGR parsing map, inRange per pixel,
and numpy's smoothstep expression over the distance transform, on real parsing maps of both clips."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from ernerf.io.layout import SubjectLayout
from ernerf.postprocess.pasteback import (HEAD_BGR, NECK_BGR, SCHEMES, PaletteMap, PasteBack, dilate, feather_alpha,
                                          hull_mask, read_parsing_map)

TRAIN_CLIPS = ["train/trump_10s.mp4", "train/hdtf_aoc_8s.mp4"]


def reference_feather(mask: np.ndarray, feather_px: float) -> np.ndarray:
    """feather_alpha as it was: numpy's expression, a fresh array per step."""
    inside = np.pad(mask.astype(np.uint8), 1)
    dist = cv2.distanceTransform(inside, cv2.DIST_L2, 5)[1:-1, 1:-1]
    t = np.clip(dist / max(feather_px, 1e-6), 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)


def reference_alpha(scheme: str, parsing_path: Path, points: np.ndarray, feather_px: float = 16.0,
                    dilate_px: int = 8) -> np.ndarray:
    """PasteBack.alpha as it was: the parsing map read by cv2.imread and its colours tested per pixel."""
    if scheme == "box":
        return reference_feather(np.ones((512, 512), bool), feather_px)
    bgr = cv2.imread(str(parsing_path))
    person = np.zeros(bgr.shape[:2], bool)
    for colour in (HEAD_BGR, NECK_BGR):
        person |= cv2.inRange(bgr, tuple(c - 63.0 for c in colour), tuple(c + 63.0 for c in colour)) > 0
    region = dilate(person, dilate_px)
    if scheme == "face":
        region = dilate(hull_mask(points, (512, 512)), dilate_px) & region
    return reference_feather(region, feather_px)


def assert_same_bits(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.dtype == expected.dtype == np.float32 and got.shape == expected.shape
    assert np.array_equal(got.view(np.uint32), expected.view(np.uint32))  # -0.0 and 0.0 differ too


@pytest.fixture(scope="module", params=TRAIN_CLIPS)
def parsed(request, prepare_subject) -> SubjectLayout:
    return SubjectLayout(prepare_subject(request.param, upto="parsing"))


def test_real_parsing_maps_give_the_plain_codes_alpha(parsed: SubjectLayout) -> None:
    """Every 4th frame of both clips, every scheme; the pipeline's maps are palette PNGs (looked up in the palette)."""
    mesh = np.load(parsed.mesh)
    frames = sorted(int(p.stem) for p in parsed.parsing_dir.glob("*.png"))[::4]
    for i in frames:
        parsing = read_parsing_map(parsed.parsing(i))
        assert isinstance(parsing, PaletteMap)
        points = mesh[i, :, :2].astype(np.float32)
        for scheme in SCHEMES:
            expected = reference_alpha(scheme, parsed.parsing(i), points)
            assert_same_bits(PasteBack(scheme).alpha(parsing, points), expected)
    assert len(frames) > 40


def test_other_pngs_are_read_as_bgr_pixels_with_the_same_alpha(parsed: SubjectLayout, tmp_path: Path) -> None:
    """An RGB PNG and a palette PNG with transparency go through cv2.imread; every palette index (past the file's
    own colours too) through the lookup."""
    source = parsed.parsing(0)
    rgb, transparent, noisy = tmp_path / "rgb.png", tmp_path / "transparent.png", tmp_path / "noisy.png"
    with Image.open(source) as img:
        img.convert("RGB").save(rgb)
        img.save(transparent, transparency=0)
        indices = np.asarray(img).copy()
        indices[::7, ::5] = np.arange(indices[::7, ::5].size).reshape(indices[::7, ::5].shape) % 256
        own = np.asarray(img.getpalette("RGB"), np.uint8)  # its classes' colours, then 36 random ones
        palette = np.concatenate([own, np.random.default_rng(0).integers(0, 256, 3 * 36, dtype=np.uint8)])
        noisy_image = Image.fromarray(indices, "P")
        noisy_image.putpalette(palette.tolist())
        noisy_image.save(noisy)
    assert isinstance(read_parsing_map(rgb), np.ndarray) and isinstance(read_parsing_map(transparent), np.ndarray)
    assert isinstance(read_parsing_map(noisy), PaletteMap)
    for path in (rgb, transparent, noisy):
        assert_same_bits(PasteBack("face_neck").alpha(read_parsing_map(path), None),
                         reference_alpha("face_neck", path, None))


def feather_masks(seed: int) -> list[np.ndarray]:
    """Blobs touching the image edge, with a hole; blobs and thin lines well inside it; one pixel; none; all."""
    rng = np.random.default_rng(seed)
    blobs = cv2.dilate((rng.random((200, 300)) > 0.995).astype(np.uint8), np.ones((25, 25), np.uint8)).astype(bool)
    blobs[:, :40] = True
    blobs[150:160, 200:210] = False
    inner = np.zeros((200, 300), bool)
    inner[60:140, 90:230] = blobs[60:140, 90:230]
    inner[100, 70:250] = inner[30:170, 150] = True
    dot = np.zeros((200, 300), bool)
    dot[rng.integers(1, 199), rng.integers(1, 299)] = True
    return [blobs, inner, dot, np.zeros((200, 300), bool), np.ones((200, 300), bool)]


@pytest.mark.parametrize("feather_px", [0.0, 0.5, 3.0, 16.0, 41.7])
def test_feather_alpha_is_numpys_expression(feather_px: float) -> None:
    """Feathers of none to wider than the masks."""
    for mask in feather_masks(int(feather_px * 10)):
        assert_same_bits(feather_alpha(mask, feather_px), reference_feather(mask, feather_px))


def test_a_damaged_parsing_map_reads_as_cv2_reads_it(tmp_path: Path) -> None:
    """Not a PNG, or cut short: what cv2.imread makes of it (None, or what it decoded), so PasteBack's errors stay."""
    garbage, cut = tmp_path / "garbage.png", tmp_path / "cut.png"
    garbage.write_bytes(b"not a png at all")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 4, (64, 64), dtype=np.uint8), "P")
    image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255])
    image.save(cut)
    cut.write_bytes(cut.read_bytes()[:60])
    assert read_parsing_map(garbage) is None
    for path in (garbage, cut):
        expected = cv2.imread(str(path))
        got = read_parsing_map(path)
        assert (got is None) == (expected is None) and (got is None or np.array_equal(got, expected))
