"""Parsing: head / neck / torso / background in the right places, in ER-NeRF's colour code."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from hydra.utils import instantiate

from ernerf.errors import ErnerfError
from ernerf.io.layout import SubjectLayout
from ernerf.preprocess import segmentation as seg
from ernerf.preprocess.base import StepContext
from ernerf.preprocess.parsing import (BACKGROUND, HEAD, NECK, PALETTE_RGB, TORSO, ParsingStep, labels_to_rgb,
                                       read_parsing)
from tests.conftest import compose

TRAIN_CLIPS = ["train/trump_10s.mp4", "train/hdtf_aoc_8s.mp4"]


@pytest.fixture(scope="module", params=TRAIN_CLIPS)
def subject(request, prepare_subject) -> SubjectLayout:
    return SubjectLayout(prepare_subject(request.param, upto="parsing"))


def _frames(layout: SubjectLayout, every: int = 10) -> list[int]:
    return list(range(0, json.loads(layout.meta.read_text())["num_frames"], every))


def colours_of(rgb: np.ndarray) -> set[tuple[int, int, int]]:
    """The distinct colours of a uint8 image [H, W, 3], each packed into one integer first (np.unique over the rows
    of an [N, 3] array sorts them as structured records, many times slower)."""
    channels = rgb.astype(np.uint32)
    packed = np.unique(channels[..., 0] << 16 | channels[..., 1] << 8 | channels[..., 2])
    return {(int(c >> 16), int(c >> 8 & 255), int(c & 255)) for c in packed}


def test_maps_use_only_the_four_colours(subject: SubjectLayout) -> None:
    n = json.loads(subject.meta.read_text())["num_frames"]
    assert len(list(subject.parsing_dir.glob("*.png"))) == n
    for i in _frames(subject, 25):
        rgb = cv2.imread(str(subject.parsing(i)))[..., ::-1]
        assert rgb.shape == (512, 512, 3)
        assert colours_of(rgb) <= {tuple(int(v) for v in c) for c in PALETTE_RGB}
        # read with cv2 (BGR), head is [255, 0, 0]: what ER-NeRF's loader tests
        bgr = cv2.imread(str(subject.parsing(i)))
        assert (read_parsing(subject.parsing(i)) == HEAD).sum() == np.all(bgr == [255, 0, 0], axis=-1).sum() > 0


def test_head_covers_the_face_mesh(subject: SubjectLayout) -> None:
    mesh = np.load(subject.mesh)
    for i in _frames(subject):
        labels = read_parsing(subject.parsing(i))
        xy = np.round(mesh[i, :, :2]).astype(int)
        inside = (xy[:, 0] >= 0) & (xy[:, 0] < 512) & (xy[:, 1] >= 0) & (xy[:, 1] < 512)
        on_head = labels[xy[inside, 1], xy[inside, 0]] == HEAD
        assert on_head.mean() > 0.99, f"frame {i}: {on_head.mean():.3f} of the mesh on head pixels"


def test_background_at_top_corners_torso_low_neck_between(subject: SubjectLayout) -> None:
    mesh = np.load(subject.mesh)
    rows = np.arange(512)[:, None].repeat(512, 1)
    for i in _frames(subject):
        labels = read_parsing(subject.parsing(i))
        for corner in (labels[:24, :24], labels[:24, -24:]):
            assert (corner == BACKGROUND).mean() > 0.9, f"frame {i}: top corner not background"
        head_y, torso_y = rows[labels == HEAD], rows[labels == TORSO]
        assert torso_y.size > 0.02 * labels.size, f"frame {i}: almost no torso"
        assert np.mean(torso_y > 256) > 0.85 and np.median(torso_y) > head_y.max() - 40
        jaw_y = mesh[i, [seg.JAW_LEFT, seg.JAW_RIGHT], 1].mean()
        face_h = mesh[i, seg.CHIN, 1] - mesh[i, seg.FOREHEAD, 1]
        neck_y = rows[labels == NECK]
        if neck_y.size:  # a collar may hide the neck; where seen, it hangs below the jaw, above the torso's bottom
            assert np.mean(neck_y > jaw_y - 0.05 * face_h) > 0.95
            assert np.median(neck_y) < torso_y.max() and np.median(neck_y) > np.median(head_y)


def test_visible_neck_is_found(prepare_subject) -> None:
    # the HDTF speaker's neck is bare from chin to shoulders: it must come out as neck, not torso
    layout = SubjectLayout(prepare_subject("train/hdtf_aoc_8s.mp4", upto="parsing"))
    areas = [np.mean(read_parsing(layout.parsing(i)) == NECK) for i in _frames(layout)]
    assert np.median(areas) > 0.03


def test_colour_code_round_trips() -> None:
    labels = np.random.default_rng(0).integers(0, 4, size=(16, 24)).astype(np.uint8)
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = f"{d}/x.png"
        cv2.imwrite(path, labels_to_rgb(labels)[..., ::-1])
        assert np.array_equal(read_parsing(path), labels)
    assert tuple(PALETTE_RGB[HEAD]) == (0, 0, 255) and tuple(PALETTE_RGB[TORSO]) == (255, 0, 0)


def test_mask_helpers_on_analytic_shapes() -> None:
    ring = np.zeros((50, 50), bool)
    cv2.circle(ring.view(np.uint8), (25, 25), 15, 1, thickness=3)
    filled = seg.fill_holes(ring)
    assert filled[25, 25] and not filled[2, 2] and filled.sum() > ring.sum() + 400
    two = np.zeros((50, 50), bool)
    two[5:10, 5:10] = True
    two[30:45, 30:45] = True
    seed = np.zeros_like(two)
    seed[7, 7] = True
    assert seg.components_touching(two, seed).sum() == 25
    assert seg.drop_small_components(two, 100).sum() == 225
    # a notch open to the border is not a hole
    cup = np.zeros((50, 50), bool)
    cup[10:50, 10:40] = True
    cup[20:50, 20:30] = False
    assert seg.fill_holes(cup).sum() == cup.sum()


def test_config_builds_the_step_and_bad_inputs_name_the_fix(tmp_path) -> None:
    cfg = compose("preprocess", ["subject=test", "preprocess.workers=1"])
    step = instantiate(cfg.preprocess.steps.parsing)
    assert isinstance(step, ParsingStep) and step.workers == 1 and step.params.neck_width > 0
    with pytest.raises(ErnerfError, match="backend"):
        ParsingStep(backend="nope")
    layout = SubjectLayout(tmp_path / "s")
    layout.root.mkdir()
    layout.meta.write_text(json.dumps({"fps": 25, "num_frames": 3}))
    with pytest.raises(ErnerfError, match="landmarks"):
        step.run(StepContext(layout=layout))


def test_bisenet_backend_without_weights_names_the_config_key(tmp_path) -> None:
    with pytest.raises(ErnerfError, match="preprocess.steps.parsing.bisenet_weights"):
        ParsingStep(backend="bisenet")
    with pytest.raises(ErnerfError, match="preprocess.steps.parsing.bisenet_weights"):
        ParsingStep(backend="bisenet", bisenet_weights=str(tmp_path / "missing.pth"))
    cfg = compose("preprocess", ["subject=test", "preprocess.steps.parsing.backend=bisenet"])
    with pytest.raises(Exception, match="bisenet_weights") as info:  # Hydra wraps constructor errors
        instantiate(cfg.preprocess.steps.parsing)
    assert isinstance(info.value, ErnerfError) or isinstance(info.value.__cause__, ErnerfError)


def test_bisenet_backend_loads_a_checkpoint_and_writes_maps(tmp_path) -> None:
    import torch

    from ernerf.preprocess.bisenet import CELEBA_TO_ERNERF, BiSeNet, load_bisenet

    torch.manual_seed(0)
    net = BiSeNet()
    # parameter names of the public face-parsing checkpoint, saved from DataParallel ("module." prefix)
    names = set(net.state_dict())
    assert {"cp.resnet.layer4.1.bn2.running_var", "cp.arm32.conv_atten.weight", "cp.conv_avg.conv.weight",
            "ffm.convblk.conv.weight", "conv_out.conv_out.weight", "conv_out16.conv.bn.bias"} <= names
    weights = tmp_path / "bisenet.pth"
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, weights)
    loaded = load_bisenet(weights)
    x = torch.randn(1, 3, 64, 96)
    with torch.inference_mode():
        assert torch.allclose(loaded(x), net.eval()(x)) and loaded(x).shape == (1, 19, 64, 96)
    bad = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(3)}, bad)
    with pytest.raises(ErnerfError, match="BiSeNet"):
        load_bisenet(bad)
    # CelebAMask-HQ classes: skin and hair are head, neck is neck, cloth is torso
    assert CELEBA_TO_ERNERF[1] == HEAD and CELEBA_TO_ERNERF[17] == HEAD
    assert CELEBA_TO_ERNERF[14] == NECK and CELEBA_TO_ERNERF[16] == TORSO and CELEBA_TO_ERNERF[0] == BACKGROUND

    layout = SubjectLayout(tmp_path / "s")
    layout.ori_imgs.mkdir(parents=True)
    layout.meta.write_text(json.dumps({"fps": 25, "num_frames": 2}))
    for i in range(2):
        cv2.imwrite(str(layout.ori_img(i)), np.full((64, 64, 3), 40 * i, np.uint8))
    step = ParsingStep(backend="bisenet", bisenet_weights=str(weights), workers=1)
    facts = step.run(StepContext(layout=layout))
    assert facts["backend"] == "bisenet"
    for i in range(2):
        labels = read_parsing(layout.parsing(i))
        assert labels.shape == (64, 64) and labels.max() <= TORSO


def test_mahalanobis2_equals_the_einsum_bit_for_bit() -> None:
    from ernerf.preprocess.parsing import mahalanobis2

    rng = np.random.default_rng(3)
    v = rng.normal(0, 30, (70, 90, 2)).astype(np.float32)
    icov = np.array([[0.031, -0.0123], [-0.0123, 0.057]], np.float32)
    expected = np.einsum("...i,ij,...j->...", v, icov, v)
    got = mahalanobis2(v, icov)
    assert got.dtype == np.float32 and np.array_equal(got, expected)
    assert np.allclose(got, 0.031 * v[..., 0] ** 2 - 2 * 0.0123 * v[..., 0] * v[..., 1] + 0.057 * v[..., 1] ** 2,
                       rtol=1e-4, atol=1e-3)


def _neck_whole_frame(skin: np.ndarray, band: np.ndarray, head: np.ndarray, radius: int) -> np.ndarray:
    """neck_from_skin on the whole frame, written plainly: what the windowed version must equal."""
    neck = seg.open_close(skin, radius) & band
    touching = cv2.dilate(head.astype(np.uint8), seg.disk(radius + 2)).astype(bool)
    return seg.fill_holes(seg.components_touching(neck, touching)) & band


def test_neck_from_skin_in_the_band_window_equals_the_whole_frame() -> None:
    from ernerf.preprocess.parsing import neck_from_skin

    rng = np.random.default_rng(4)
    shape = (72, 96)
    for case in range(150):
        band = np.zeros(shape, np.uint8)
        x, y = rng.integers(-10, 90), rng.integers(-10, 66)  # bands at and past the frame's edges too
        cv2.ellipse(band, (int(x), int(y)), (int(rng.integers(3, 30)), int(rng.integers(3, 20))), 0, 0, 360, 1, -1)
        band = band.astype(bool)
        skin = band & (cv2.blur(rng.random(shape, dtype=np.float32), (3, 3)) > rng.uniform(0.3, 0.6))
        head = np.zeros(shape, np.uint8)
        centre = (int(x + rng.integers(-15, 15)), int(y - rng.integers(0, 25)))
        cv2.circle(head, centre, int(rng.integers(4, 20)), 1, -1)
        radius = int(rng.integers(0, 5))
        got = neck_from_skin(skin, band, head.astype(bool), radius)
        assert np.array_equal(got, _neck_whole_frame(skin, band, head.astype(bool), radius)), case
    empty = np.zeros(shape, bool)
    assert not neck_from_skin(empty, empty, empty, 3).any()
