"""Error-guided ray sampling: draws follow each frame's error map, the map follows the observed errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from datamodules.error_map import ErrorMap
from datamodules.samplers import LipsRaySampler, RandomRaySampler
from ernerf.errors import ErnerfError

H, W, CELLS, FRAMES = 32, 48, 8, 3


def fitted(**kwargs) -> ErrorMap:
    error_map = ErrorMap(cells=CELLS, **kwargs)
    error_map.fit({"face": torch.zeros(FRAMES, 4, dtype=torch.long)})
    return error_map


def frame(number: int) -> torch.Tensor:
    return torch.tensor([number])


def cell_of(index: torch.Tensor) -> torch.Tensor:
    """Cell number of flat pixel ids on the H x W frame's CELLS x CELLS grid."""
    return ((index // W) * CELLS // H) * CELLS + (index % W) * CELLS // W


def all_pixels() -> torch.Tensor:
    return torch.arange(H * W)


def error_in_one_cell(cell: int, level: float = 1.0) -> torch.Tensor:
    """Per-pixel error [H * W]: `level` in one cell, zero elsewhere."""
    return (cell_of(all_pixels()) == cell).float() * level


def test_draws_put_the_guided_share_of_rays_where_the_error_is() -> None:
    error_map = fitted(uniform_fraction=0.5)
    error_map.observe(frame(1), all_pixels(), error_in_one_cell(19), H, W)
    index = error_map.draw(4000, H, W, frame(1), torch.Generator().manual_seed(0))
    share = float((cell_of(index) == 19).float().mean())
    assert share == pytest.approx(0.5 + 0.5 / CELLS**2, abs=0.03)  # all guided rays + the uniform ones that land there
    rows, cols = index[2000:] // W, index[2000:] % W  # the guided rays: spread over the whole cell, not one pixel
    assert len(set(rows.tolist())) == H // CELLS and len(set(cols.tolist())) == W // CELLS


def test_the_uniform_share_covers_the_whole_image() -> None:
    error_map = fitted(uniform_fraction=0.5)
    error_map.observe(frame(0), all_pixels(), error_in_one_cell(0), H, W)
    index = error_map.draw(20000, H, W, frame(0), torch.Generator().manual_seed(1))
    assert set(cell_of(index[:10000]).tolist()) == set(range(CELLS**2))  # every cell, by the uniform half alone
    counts = torch.bincount(cell_of(index[:10000]), minlength=CELLS**2).float()
    assert counts.std() / counts.mean() < 0.2  # ... and evenly


def test_an_untouched_map_draws_uniformly() -> None:
    index = fitted(uniform_fraction=0.0).draw(20000, H, W, frame(2), torch.Generator().manual_seed(2))
    counts = torch.bincount(cell_of(index), minlength=CELLS**2).float()
    assert 0 <= int(index.min()) and int(index.max()) < H * W
    assert counts.std() / counts.mean() < 0.2


def test_observing_moves_the_map_toward_the_errors_seen_and_leaves_other_cells() -> None:
    error_map = fitted(rate=0.5)
    error_map.observe(frame(0), all_pixels(), torch.full((H * W,), 0.2), H, W)  # the first observation is taken whole
    assert torch.allclose(error_map.frames[0], torch.full((CELLS**2,), 0.2))
    pixels = all_pixels()[cell_of(all_pixels()) == 5]
    error_map.observe(frame(0), pixels, torch.full((len(pixels),), 1.0), H, W)
    assert float(error_map.frames[0, 5]) == pytest.approx(0.6)  # halfway from 0.2 to 1.0
    assert torch.allclose(error_map.frames[0, :5], torch.tensor(0.2))


def test_each_frame_has_its_own_map() -> None:
    error_map = fitted(uniform_fraction=0.0)
    error_map.observe(frame(2), all_pixels(), torch.full((H * W,), 0.1), H, W)  # frame 2: flat error
    error_map.observe(frame(0), all_pixels(), error_in_one_cell(7), H, W)  # frame 0: all of it in cell 7
    assert torch.allclose(error_map.frames[2], torch.tensor(0.1)) and error_map.frames[1].isnan().all()
    on_zero = error_map.draw(1000, H, W, frame(0), torch.Generator().manual_seed(3))
    on_two = error_map.draw(1000, H, W, frame(2), torch.Generator().manual_seed(3))
    assert (cell_of(on_zero) == 7).all() and float((cell_of(on_two) == 7).float().mean()) < 0.05


def test_frames_not_observed_yet_draw_from_the_map_of_all_frames() -> None:
    error_map = fitted(uniform_fraction=0.0, shared_rate=1.0)
    error_map.observe(frame(0), all_pixels(), error_in_one_cell(3), H, W)
    index = error_map.draw(500, H, W, frame(1), torch.Generator().manual_seed(4))
    assert (cell_of(index) == 3).all()


def test_reweighted_draws_estimate_the_uniform_mean_error() -> None:
    """Importance weights: the weighted mean error of guided draws is the image's mean error, as with uniform rays."""
    error_map = fitted(uniform_fraction=0.25, reweight=True)
    error = torch.rand(H * W, generator=torch.Generator().manual_seed(8)) * error_in_one_cell(19, 1.0) + 0.01
    error_map.observe(frame(0), all_pixels(), error, H, W)
    index = error_map.draw(200_000, H, W, frame(0), torch.Generator().manual_seed(9))
    weight = error_map.loss_weights(index, H, W, frame(0))
    assert float((weight * error[index]).mean()) == pytest.approx(float(error.mean()), rel=0.03)
    assert float(error[index].mean()) > 3 * float(error.mean())  # unweighted, the loss leans toward cell 19
    assert float(weight.mean()) == pytest.approx(1.0, rel=0.03) and float(weight.max()) <= 1 / 0.25 + 1e-4
    untouched = fitted(reweight=True)
    assert torch.allclose(untouched.loss_weights(index[:100], H, W, frame(1)), torch.ones(100))


def test_draws_repeat_with_the_same_seed() -> None:
    error_map = fitted()
    error_map.observe(frame(1), all_pixels(), torch.rand(H * W, generator=torch.Generator().manual_seed(5)), H, W)
    first, again = (error_map.draw(300, H, W, frame(1), torch.Generator().manual_seed(6)) for _ in range(2))
    other = error_map.draw(300, H, W, frame(1), torch.Generator().manual_seed(7))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_samplers_take_the_map_for_their_random_rays_and_check_it() -> None:
    sampler = LipsRaySampler(num_rays=64, size=4, error_map=ErrorMap(cells=CELLS))
    assert sampler.learns_from_errors and not LipsRaySampler(num_rays=64).learns_from_errors
    sampler.fit({"lips": torch.tensor([[10, 14, 20, 24]] * FRAMES)})
    sampler.observe(frame(0), all_pixels(), error_in_one_cell(9), H, W)
    sampler.next_layout()  # the lips square's turn passes
    assert torch.equal(sampler.samplers[1].error_map.frames[0], torch.eye(CELLS**2)[9])
    assert sampler(H, W, {"lips": torch.tensor([10, 14, 20, 24])}, frame=frame(0)).index.shape == (64,)
    with pytest.raises(ErnerfError, match="frame index"):
        RandomRaySampler(10, ErrorMap(cells=CELLS))(H, W, {})
    with pytest.raises(ErnerfError, match="at most the frame's side"):
        fitted().draw(10, 4, 4, frame(0))


class HostReads(TorchFunctionMode):
    """Fails on any read of a tensor's value by the host: what would stall a CUDA graph's capture or replay."""

    READS = {Tensor.item, Tensor.tolist, Tensor.numpy, Tensor.__bool__, Tensor.__int__, Tensor.__float__,
             Tensor.__index__}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.READS:
            raise AssertionError(f"host read of a tensor: {func.__name__}")
        return func(*args, **(kwargs or {}))


def test_error_guided_batches_are_built_and_observed_without_host_reads(tmp_path: Path) -> None:
    """What a CUDA graph needs: the batch built from a frame index, and the map's update, read no tensor value back."""
    from datamodules.subject import SubjectDataModule
    from tests.synthetic import write_synthetic_subject

    write_synthetic_subject(tmp_path / "sphere", num_frames=6, size=16)
    sampler = LipsRaySampler(num_rays=40, error_map=ErrorMap(cells=4, reweight=True))
    dm = SubjectDataModule(str(tmp_path / "sphere"), "aud_mel.npy", sampler=sampler, preload=True, num_workers=0)
    dm.setup("fit")
    rays = dm.train_rays
    rays.frames_only = True
    item = rays[2]
    with HostReads():
        for layout in (0, 1):  # the lips square, then the error-guided rays
            batch = rays.build(item["frame_index"], layout=layout)
            sampler.observe(batch["frame_index"], batch["pixel_index"], batch["rgb"].mean(-1), 16, 16)
            assert ("loss_weight" in batch) == (layout == 1)  # the guided rays carry their loss weights
    maps = sampler.samplers[1].error_map.frames
    assert batch["pixel_index"].shape == batch["loss_weight"].shape == (40,)
    assert not maps[2].isnan().all() and maps[3].isnan().all()
    with pytest.raises(AssertionError, match="host read"), HostReads():
        bool(batch["frame_index"] > 0)  # the guard itself works


def test_loader_processes_draw_from_the_map_this_process_updates(tmp_path: Path) -> None:
    """On the CPU the maps sit in shared memory: a loader worker started before an update draws from the updated map."""
    from datamodules.subject import SubjectDataModule
    from tests.synthetic import write_synthetic_subject

    write_synthetic_subject(tmp_path / "sphere", num_frames=24, size=16)
    sampler = RandomRaySampler(32, ErrorMap(cells=4, uniform_fraction=0.0))
    dm = SubjectDataModule(str(tmp_path / "sphere"), "aud_mel.npy", sampler=sampler, num_workers=1)
    dm.setup("fit")
    batches = iter(dm.train_dataloader())
    next(batches)  # the worker runs (and has drawn its next batches) before the map learns anything
    corner = torch.arange(16 * 16)[(torch.arange(16 * 16) // 16 < 4) & (torch.arange(16 * 16) % 16 < 4)]
    for number in range(24):  # every frame: all the error in the top-left cell
        sampler.observe(frame(number), torch.arange(16 * 16), torch.isin(torch.arange(16 * 16), corner).float(), 16, 16)
    later = [next(batches)["pixel_index"] for _ in range(5)][-1]
    assert torch.isin(later, corner).all()


def test_a_sampler_state_round_trips_into_the_fitted_maps_in_place() -> None:
    """What a checkpoint keeps: the maps learnt so far, copied back into the tensors loader processes share."""
    def lips_sampler() -> LipsRaySampler:
        sampler = LipsRaySampler(num_rays=16, error_map=ErrorMap(cells=CELLS))
        sampler.fit({"lips": torch.tensor([[10, 14, 20, 24]] * FRAMES)})
        return sampler

    trained = lips_sampler()
    trained.observe(frame(2), all_pixels(), error_in_one_cell(5), H, W)
    state = trained.state_dict()
    assert set(state) == {"1"}  # only the random turn learns; the lips square keeps nothing
    resumed = lips_sampler()
    maps = resumed.samplers[1].error_map.frames
    resumed.load_state_dict(state)
    assert resumed.samplers[1].error_map.frames is maps and maps.is_shared()
    assert torch.equal(maps.nan_to_num(-1), trained.samplers[1].error_map.frames.nan_to_num(-1))
    assert torch.equal(resumed.samplers[1].error_map.shared, trained.samplers[1].error_map.shared)
    assert RandomRaySampler(16).state_dict() == {}  # uniform sampling: nothing to checkpoint
    other = ErrorMap(cells=CELLS // 2)
    other.fit({"face": torch.zeros(FRAMES, 4, dtype=torch.long)})
    with pytest.raises(ErnerfError, match="error_map.cells it was trained with"):
        other.load_state_dict(state["1"]["error_map"])


def test_the_callback_feeds_the_step_errors_of_its_pixels_to_the_sampler() -> None:
    from types import SimpleNamespace

    from callbacks.ray_errors import RayErrorFeedback

    sampler = RandomRaySampler(16, ErrorMap(cells=CELLS))
    sampler.fit({"face": torch.zeros(FRAMES, 4, dtype=torch.long)})
    trainer = SimpleNamespace(datamodule=SimpleNamespace(sampler=sampler, frame_size=(H, W)))
    feedback = RayErrorFeedback()
    feedback.on_fit_start(trainer, None)
    pixels = all_pixels()[cell_of(all_pixels()) == 4]
    target = torch.zeros(len(pixels), 3)
    outputs = {"rgb": target + 0.5, "target": target, "pixel_index": pixels, "frame_index": frame(1)}
    feedback.on_train_batch_end(trainer, None, outputs, {}, 0)
    assert float(sampler.error_map.frames[1, 4]) == pytest.approx(0.25)  # (0.5)^2 in every channel
    assert sampler.error_map.frames[1, :4].isnan().all() and sampler.error_map.frames[0].isnan().all()


def test_training_with_the_error_map_feeds_it_learns_and_resumes_with_it(tmp_path: Path) -> None:
    """A tiny head run with ray_guide=error_map: the step's errors reach the sampler's map, the run learns, the map is
    checkpointed, and a resumed run goes on from it instead of starting uniform."""
    from ernerf.apps.train import train
    from tests.synthetic import write_synthetic_subject
    from tests.test_train import STEPS, logged, tiny_config

    guide = ["ray_guide=error_map", "datamodule.sampler.error_map.cells=8"]
    write_synthetic_subject(tmp_path / "data" / "sphere", num_frames=6, size=16)
    train(tiny_config(tmp_path, STEPS, *guide))
    run = tmp_path / "runs" / "sphere" / "head"
    psnr = [v for _, v in logged(run, "train/psnr")]
    gain = sum(psnr[-2:]) / 2 - sum(psnr[:2]) / 2
    assert gain > 2.5, f"training PSNR rose only {gain:.2f} dB: {psnr}"

    def saved_map() -> Tensor:
        ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
        return ckpt["SubjectDataModule"]["sampler"]["error_map"]["frames"]

    before = saved_map()
    seen = ~before.isnan().any(1)  # the frames trained on (a step's rays cover a 16 x 16 frame: every cell)
    assert before.shape == (6, 64) and int(seen.sum()) >= 4
    train(tiny_config(tmp_path, STEPS + 1, *guide, "ckpt_path=last"))
    after = saved_map()
    kept = (after[seen] == before[seen]).all(1)
    assert int(kept.sum()) == int(seen.sum()) - 1 or bool(kept.all()), "the resumed run did not start from the saved map"
