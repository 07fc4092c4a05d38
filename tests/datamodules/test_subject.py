"""SubjectDataModule on the synthetic sphere subject (fast) and on a real preprocessed clip (slow)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from datamodules.frames import GiB, FreeMemory
from datamodules.samplers import LipsRaySampler, RectRaySampler
from datamodules.subject import SubjectDataModule, parse_subject
from ernerf.errors import ErnerfError
from ernerf.rendering.rays import get_rays
from tests.synthetic import CAMERA_DISTANCE, SPHERE_RADIUS, background_plate, write_synthetic_subject

NGP_SCALE = 4.0


@pytest.fixture(scope="module")
def subject(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_subject(tmp_path_factory.mktemp("synthetic") / "sphere", num_frames=12, size=32)


def make_datamodule(root: Path, **kwargs) -> SubjectDataModule:
    roomy = FreeMemory(None, 64 * GiB)  # preloading checks free memory: the tests' figure, not the busy machine's
    dm = SubjectDataModule(str(root), "aud_mel.npy",
                           **{"num_rays": 256, "num_workers": 0, "free_memory": lambda device: roomy, **kwargs})
    dm.setup("fit")
    return dm


def ray_distance_to_origin(rays_o: torch.Tensor, rays_d: torch.Tensor) -> torch.Tensor:
    """Closest approach of each ray [N] to the model-space origin."""
    d = rays_d / rays_d.norm(dim=-1, keepdim=True)
    return torch.linalg.cross(rays_o, d).norm(dim=-1)


def test_parse_reads_split_intrinsics_eye_audio_and_rects(subject: Path) -> None:
    data = parse_subject(subject, "aud_mel.npy")
    assert (data.num_frames, data.num_train, data.height, data.width) == (12, 10, 32, 32)
    assert data.intrinsics == pytest.approx((35.2, 35.2, 16.0, 16.0))
    au = 2.5 + 2.5 * np.sin(np.arange(12))
    assert data.eye.numpy() == pytest.approx(np.clip(au, 0, 2) / 2, abs=1e-3)
    window = data.audio_window(0)  # frames -4..3: the four before the clip repeat its first window
    assert window.shape == (8, 16, 80)
    assert all(torch.equal(w, data.audio[0]) for w in window[:5]) and torch.equal(window[5], data.audio[1])
    last = data.audio_window(data.num_frames - 1)  # frames 7..14 of 12: the last window three times past the end
    assert all(torch.equal(w, data.audio[-1]) for w in last[4:]) and torch.equal(last[3], data.audio[-2])
    lips, face = data.rects_of(3)["lips"], data.rects_of(3)["face"]
    assert lips.height == lips.width > 0
    assert face.top <= lips.top and lips.bottom <= face.bottom + 1


def test_training_rays_hit_the_sphere_exactly_where_the_image_shows_it(subject: Path) -> None:
    dm = make_datamodule(subject, num_rays=32 * 32)
    batch = dm.train_dataloader().dataset[4]
    dist = ray_distance_to_origin(batch["rays_o"], batch["rays_d"])  # [N]
    plate = torch.from_numpy(background_plate(32)).float().reshape(-1, 3)[batch["pixel_index"]]
    on_sphere = (batch["rgb"] - plate).abs().max(-1).values > 0.1
    radius = NGP_SCALE * SPHERE_RADIUS
    pixel = NGP_SCALE * CAMERA_DISTANCE / 35.2  # one pixel at the sphere (JPEG blurs the silhouette by about that)
    assert (dist[on_sphere] < radius + pixel).all()
    assert (dist[dist < radius * 0.9] < radius).all() and on_sphere[dist < radius * 0.9].all()


def test_training_batch_is_one_frame_of_rays_with_targets_and_conditioning(subject: Path) -> None:
    dm = make_datamodule(subject)
    loader = dm.train_dataloader()
    assert loader.batch_size is None and len(loader) == 10
    batch = next(iter(loader))
    n = 256
    assert batch["rays_o"].shape == batch["rays_d"].shape == batch["rgb"].shape == batch["bg"].shape == (n, 3)
    assert batch["rgb"].dtype == torch.float32 and 0 <= batch["rgb"].min() and batch["rgb"].max() <= 1
    assert batch["frame_index"].shape == (1,) and batch["frame_index"].dtype == torch.long
    frame = int(batch["frame_index"])
    assert 0 <= frame < 10 and batch["audio"].shape == (8, 16, 80)
    assert abs(float(batch["eye"]) - float(dm.data.eye[frame])) <= 0.05 + 1e-6
    plate = dm.store.plate.reshape(-1, 3)[batch["pixel_index"]].float() / 255  # synthetic torso is empty
    assert torch.allclose(batch["bg"], plate)
    face = dm.data.rects_of(frame)["face"]
    assert torch.equal(batch["face_mask"], face.contains(batch["pixel_index"], 32))


def test_validation_batches_are_whole_held_out_frames(subject: Path) -> None:
    dm = make_datamodule(subject, num_val_frames=None)
    batches = list(dm.val_dataloader())
    assert [b["frame"] for b in batches] == [10, 11]
    b = batches[0]
    assert b["rgb"].shape == b["bg"].shape == (32, 32, 3) and b["c2w"].shape == (4, 4)
    assert torch.equal(b["c2w"], dm.data.poses[10]) and b["intrinsics"].tolist() == pytest.approx(dm.data.intrinsics)
    assert b["frame_index"] is None  # unseen frame: the model uses its mean individual code


def test_preload_and_lazy_loading_give_the_same_batches(subject: Path) -> None:
    lazy, eager = make_datamodule(subject), make_datamodule(subject, preload=True)
    assert eager.store.frames["image"].dtype == torch.uint8 and eager.store.frames["image"].shape == (12, 32, 32, 3)
    assert lazy.store.frames == {} and (lazy.store.mode, eager.store.mode) == ("disk", "device")
    assert torch.equal(lazy.store.image(7), eager.store.image(7))
    assert torch.equal(lazy.store.background(7), eager.store.background(7))


def test_a_batch_built_from_a_frame_index_is_the_loaders_batch(subject: Path) -> None:
    """The CUDA-graphed step builds batches from the frame index alone (rays drawn in the graph); with the same
    random draws it must be the batch the loader gives for that frame."""
    dm = make_datamodule(subject, preload=True, parsing_masks=False)
    rays = dm.train_rays
    for frame in (0, 5, dm.data.num_train - 1):
        torch.manual_seed(3)
        ref = rays[frame]
        torch.manual_seed(3)
        got = rays.build(torch.tensor([frame]))
        assert got.keys() == ref.keys() and ref["frame_index"].dtype == torch.long
        for key, value in ref.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(got[key], value), key
            else:
                assert got[key] == value, key
    # audio windows at the clip's ends (edge windows repeated beyond them) agree with the parsed subject's
    for frame in range(dm.data.num_frames):
        assert torch.equal(dm.store.audio_window_at(torch.tensor([frame])), dm.data.audio_window(frame))
        assert torch.equal(dm.store.audio_window(frame), dm.data.audio_window(frame))


def test_the_occupancy_refresh_conditioning_is_the_frames_audio_and_eye(subject: Path) -> None:
    dm = make_datamodule(subject, preload=True)
    audio, eye = dm.conditioning(4)
    assert torch.equal(audio, dm.data.audio_window(4)) and torch.equal(eye, dm.data.eye[4:5])


def test_device_batches_only_where_frames_are_preloaded_on_a_gpu(subject: Path) -> None:
    dm = make_datamodule(subject, preload=True)
    assert dm.device_batches() is None  # on the CPU the loader keeps building batches
    assert not dm.train_rays.frames_only and isinstance(dm.train_rays[2]["rays_o"], torch.Tensor)
    dm.train_rays.frames_only = True
    item = dm.train_rays[2]
    assert item == {"frame_index": item["frame_index"], "layout": 0} and torch.equal(item["frame_index"], torch.tensor([2]))


def test_lips_batches_built_from_a_frame_index_take_turns_at_fixed_shapes(subject: Path) -> None:
    """What a graphed lips step gets: frame indices with the sampler's turn; the batch built from them (regions read
    on the device) equals the loader's own."""
    dm = make_datamodule(subject, sampler=LipsRaySampler(num_rays=50), preload=True)
    assert dm.fixed_layouts
    rays = dm.train_rays
    side = max(int(r[1] - r[0]) for r in dm.data.rects["lips"])
    eager = [rays[3], rays[3]]  # lips square, then random rays
    rays.frames_only = True
    items = [rays[3], rays[3]]
    assert [i["layout"] for i in items] == [0, 1]
    built = rays.build_turn(items[0]["frame_index"], items[0]["layout"])  # as the graph calls device_batches()'s
    assert built["patch_shape"] == eager[0]["patch_shape"] == (side, side)
    assert torch.equal(built["pixel_index"], eager[0]["pixel_index"])
    assert torch.equal(built["rgb"], eager[0]["rgb"])
    assert rays.build_turn(items[1]["frame_index"], 1)["pixel_index"].shape == eager[1]["pixel_index"].shape == (50,)
    lips = dm.data.rects_of(3)["lips"]
    inside = lips.contains(built["pixel_index"], dm.data.width)
    assert int(inside.sum()) == lips.height * lips.width  # the square holds the frame's whole lips square


def test_lips_squares_of_their_own_size_are_no_fixed_layout(subject: Path) -> None:
    dm = make_datamodule(subject, sampler=LipsRaySampler(num_rays=50, size=None))
    assert not dm.fixed_layouts
    lips = dm.data.rects_of(2)["lips"]
    assert dm.train_rays[2]["patch_shape"] == (lips.height, lips.width)


def test_downscale_halves_images_intrinsics_and_rects(subject: Path) -> None:
    full, half = parse_subject(subject, "aud_mel.npy"), parse_subject(subject, "aud_mel.npy", downscale=2)
    assert (half.height, half.width) == (16, 16)
    assert half.intrinsics == pytest.approx(tuple(v / 2 for v in full.intrinsics))
    assert abs(half.rects_of(0)["face"].bottom - full.rects_of(0)["face"].bottom / 2) <= 1


def test_lips_sampler_returns_the_lips_square_of_the_frame(subject: Path) -> None:
    dm = make_datamodule(subject, sampler=RectRaySampler("lips"))
    batch = dm.train_dataloader().dataset[2]
    lips = dm.data.rects_of(2)["lips"]
    assert batch["patch_shape"] == (lips.height, lips.width)
    assert lips.contains(batch["pixel_index"], 32).all()


def test_missing_subject_or_audio_kind_raise_with_the_command_to_run(subject: Path, tmp_path: Path) -> None:
    with pytest.raises(ErnerfError, match="python preprocess.py video=<your video> subject=nobody"):
        parse_subject(tmp_path / "nobody", "aud_mel.npy")
    with pytest.raises(ErnerfError, match="audio features 'hu'.*preprocess.force=\\[audio_features\\]"):
        parse_subject(subject, "aud_hu.npy")
    partial = tmp_path / "partial"
    shutil.copytree(subject, partial)
    (partial / "au.csv").unlink()
    with pytest.raises(ErnerfError, match="blink step"):
        parse_subject(partial, "aud_mel.npy")


@pytest.mark.slow
def test_real_clip_rays_of_head_pixels_pass_through_the_head_box(prepare_subject) -> None:
    root = prepare_subject("train/trump_10s.mp4")
    meta = json.loads((root / "meta.json").read_text())
    dm = make_datamodule(root, downscale=4, num_val_frames=2)
    data = dm.data
    assert data.num_frames == meta["num_frames"] and data.num_train == int(meta["num_frames"] * 10 / 11)
    assert data.audio.shape[1:] == (16, 80) and 0 <= float(data.eye.min()) and float(data.eye.max()) <= 1
    frame = dm.val_frames()[0]
    face = data.rects_of(frame)["face"]
    centre = ((face.top + face.bottom) // 2) * data.width + (face.left + face.right) // 2
    rays_o, rays_d = get_rays(data.poses[frame][None], data.intrinsics, data.height, data.width, torch.tensor([[centre, 0]]))
    dist = ray_distance_to_origin(rays_o[0], rays_d[0])
    assert float(dist[0]) < 0.5  # the face centre's ray passes close to the head's centre (inside the unit box)
    assert float(dist[1]) > float(dist[0])  # the image corner's ray passes farther away


def test_device_batches_hands_the_graph_a_builder_of_frame_index_and_turn(subject: Path) -> None:
    """`GraphedStep` calls the builder as `(frame index, turn)` (ernerf/engine/cuda_graph.py): what device_batches
    returns must take exactly that, for the lips square's turn too (which reads the frame's regions)."""
    dm = make_datamodule(subject, sampler=LipsRaySampler(num_rays=50), preload=True)
    cpu = dm.store.device
    dm.store.device = SimpleNamespace(type="cuda")  # what device_batches asks of the store; the batches build on the CPU
    build = dm.device_batches()
    dm.store.device = cpu
    assert build is not None and dm.train_rays.frames_only
    index = dm.store.index(3)
    side = max(int(r[1] - r[0]) for r in dm.data.rects["lips"])
    assert build(index, 0)["patch_shape"] == (side, side)
    assert build(index, 1)["pixel_index"].shape == (50,)
