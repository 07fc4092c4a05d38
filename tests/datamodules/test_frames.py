"""Where frames live (datamodule.preload): device, host memory staged per step, or disk give the same batches; auto
picks by free memory; explicit modes that cannot fit fail in one line; threaded preloading decodes what one thread
does."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

import datamodules.frames as frames
from datamodules.frames import GiB, FreeMemory, HostFrames, choose_preload, preload_frames, preload_mode
from datamodules.subject import SubjectDataModule
from ernerf.errors import ErnerfError
from tests.synthetic import write_synthetic_subject

CUDA, CPU = torch.device("cuda"), torch.device("cpu")  # a cuda device object needs no GPU
FRAME = 512 * 512 * 6  # image + torso background at 512 px
TEN_MINUTES = 15_000


@pytest.fixture(scope="module")
def subject(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_subject(tmp_path_factory.mktemp("frames") / "sphere", num_frames=12, size=32)


def roomy(device: torch.device) -> FreeMemory:
    """Plenty of memory, whatever the machine running the tests has free now."""
    return FreeMemory(None if device.type == "cpu" else 64 * GiB, 64 * GiB)


def make_datamodule(root: Path, preload: bool | str, **kwargs) -> SubjectDataModule:
    dm = SubjectDataModule(str(root), "aud_mel.npy", num_rays=64, num_workers=0, preload=preload,
                           **{"free_memory": roomy, **kwargs})
    dm.setup("fit")
    return dm


def assert_same_batch(got: dict, ref: dict) -> None:
    assert got.keys() == ref.keys()
    for key, value in ref.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(got[key], value), key
        else:
            assert got[key] == value, key


@pytest.mark.parametrize("parsing_masks", [False, True])
def test_host_frames_staged_per_step_give_the_batches_of_device_and_disk_frames(subject: Path,
                                                                               parsing_masks: bool) -> None:
    stores = {mode: make_datamodule(subject, mode, parsing_masks=parsing_masks) for mode in ("device", "host", "disk")}
    host = stores["host"]
    assert host.store.staged is not None and set(host.store.staged.buffers) == set(host.store.frames)
    assert ("masks" in host.store.frames) == parsing_masks and host.train_dataloader().num_workers == 0
    for frame in (0, 6, 9):
        batches = {}
        for mode, dm in stores.items():
            torch.manual_seed(5)
            item = dm.train_rays[frame]
            batches[mode] = dm.on_after_batch_transfer(item, 0)  # stages host frames, as Lightning before the step
        assert "stage_frame" not in batches["host"]
        assert_same_batch(batches["host"], batches["device"])
        assert_same_batch(batches["disk"], batches["device"])


def test_lips_turns_on_host_frames_alternate_as_on_device_frames(subject: Path) -> None:
    """The lips stage's sampler takes turns (lips square, random rays); a host item names its turn, and the batch
    built at staging time is the device store's batch of that turn."""
    from datamodules.samplers import LipsRaySampler

    host, device = (make_datamodule(subject, mode, sampler=LipsRaySampler(num_rays=40)) for mode in ("host", "device"))
    for frame in (1, 1, 7, 4):
        torch.manual_seed(frame)
        ref = device.train_rays[frame]
        torch.manual_seed(frame)
        assert_same_batch(host.on_after_batch_transfer(host.train_rays[frame], 0), ref)


def test_the_graph_path_reads_the_frame_staged_before_its_step_not_a_prefetched_one(subject: Path) -> None:
    """As under CUDA graphs (`device_batches`): the loader's items carry frame numbers only, the loader has already
    fetched the next item when a step starts, and the batch built from the staged buffers is the step's frame."""
    host, device = make_datamodule(subject, "host"), make_datamodule(subject, "device")
    host.train_rays.frames_only = device.train_rays.frames_only = True
    current, prefetched = host.train_rays[2], host.train_rays[8]
    step = host.on_after_batch_transfer(current, 0)
    assert step == {"frame_index": step["frame_index"], "layout": 0} and int(step["frame_index"]) == 2
    torch.manual_seed(1)
    built = host.train_rays.build(step["frame_index"], layout=step["layout"])
    torch.manual_seed(1)
    assert_same_batch(built, device.train_rays.build(device.store.index(2), layout=0))
    host.on_after_batch_transfer(prefetched, 0)  # the next step stages its own frame
    assert torch.equal(host.store.image_at(host.store.index(8)), device.store.image(8))


def test_whole_frames_of_a_host_store_are_read_from_host_memory_not_the_staged_frame(subject: Path) -> None:
    host, disk = make_datamodule(subject, "host"), make_datamodule(subject, "disk")
    host.store.stage(3)
    for frame in (10, 11):
        assert torch.equal(host.store.image(frame), disk.store.image(frame))
        assert torch.equal(host.store.background(frame), disk.store.background(frame))
    val = next(iter(host.val_dataloader()))
    assert torch.equal(val["rgb"], next(iter(disk.val_dataloader()))["rgb"])
    assert torch.equal(host.store.staged.buffers["image"], disk.store.image(3))


def test_preload_values_keep_their_meaning_and_name_the_new_modes() -> None:
    assert [preload_mode(v) for v in (True, False, "device", "host", "false", "auto", "Host")] == [
        "device", "disk", "device", "host", "disk", "auto", "host"]
    with pytest.raises(ErnerfError, match="datamodule.preload must be auto, device \\(or true\\), host or false"):
        preload_mode("gpu")


@pytest.mark.parametrize(("frames_count", "gpu_free_gib", "host_free_gib", "chosen"), [
    (7_500, 22, 60, "device"),   # 5 minutes on a 24 GB card: 11 GiB beside the training
    (TEN_MINUTES, 22, 60, "host"),   # 10 minutes there: 22 GiB, into host memory
    (TEN_MINUTES, 130, 60, "device"),  # an H200 holds both
    (TEN_MINUTES, 22, 20, "disk"),   # neither has room
])
def test_auto_picks_device_host_or_disk_from_the_free_memory(frames_count, gpu_free_gib, host_free_gib, chosen) -> None:
    mode, why = choose_preload("auto", frames_count, FRAME, CUDA, FreeMemory(gpu_free_gib * GiB, host_free_gib * GiB))
    assert mode == chosen
    need = frames_count * FRAME / GiB
    assert why == (f"datamodule.preload=auto: {chosen} ({frames_count} frames, {need:.1f} GiB; "
                   f"{gpu_free_gib:.1f} GiB free on the GPU, {host_free_gib:.1f} GiB available in host memory)")


def test_auto_keeps_reading_from_disk_on_a_cpu() -> None:
    mode, why = choose_preload("auto", 250, FRAME, CPU, FreeMemory(None, 60 * GiB))
    assert mode == "disk" and "as on every CPU run" in why


@pytest.mark.parametrize(("requested", "device", "free", "fix"), [
    ("device", CUDA, FreeMemory(16 * GiB, 60 * GiB), "use datamodule.preload=host"),
    ("host", CUDA, FreeMemory(130 * GiB, 20 * GiB), "use datamodule.preload=false"),
    ("device", CPU, FreeMemory(None, 20 * GiB), "use datamodule.preload=false"),  # the CPU's "device" is host memory
])
def test_an_explicit_mode_that_cannot_fit_fails_in_one_line_naming_the_fix(requested, device, free, fix) -> None:
    with pytest.raises(ErnerfError, match=f"datamodule.preload={requested}: the 15000 frames, 22.0 GiB do not fit") as err:
        choose_preload(requested, TEN_MINUTES, FRAME, device, free)
    assert str(err.value).endswith(fix + ".") and "\n" not in str(err.value)
    assert choose_preload(requested, 7_500, FRAME, device, FreeMemory(130 * GiB, 60 * GiB))[0] == requested


def test_the_data_module_asks_the_injected_memory_query_before_loading_and_logs_its_choice(subject: Path, caplog) -> None:
    asked = []

    def no_room(device: torch.device) -> FreeMemory:
        asked.append(device)
        return FreeMemory(None, 1)

    dm = SubjectDataModule(str(subject), "aud_mel.npy", preload="host", free_memory=no_room)
    with pytest.raises(ErnerfError, match="use datamodule.preload=false"):
        dm.setup("fit")
    assert asked == [CPU] and dm.store is None
    with caplog.at_level(logging.INFO, logger="datamodules.subject"):
        dm = make_datamodule(subject, "auto")
    assert dm.store.mode == "disk"
    assert ("datamodule.preload=auto: disk, as on every CPU run (12 frames, 0.0 GiB; 64.0 GiB available in host "
            "memory)") in caplog.text


def test_threaded_preloading_into_chunks_decodes_what_one_thread_decodes(subject: Path, monkeypatch) -> None:
    """Host frames in several chunks (the chunk size shrunk to 5 frames), decoded on 3 threads, against frames read
    one at a time; and frames on the device (the CPU here) against the same."""
    disk = make_datamodule(subject, "disk", parsing_masks=True).store
    monkeypatch.setattr(frames, "CHUNK_BYTES", 5 * 32 * 32 * 3)
    shapes = {"image": (32, 32, 3), "background": (32, 32, 3), "masks": (32, 32, 2)}
    host = preload_frames(disk.loaders, 12, shapes, CPU, host=True, threads=3)
    device = preload_frames(disk.loaders, 12, shapes, CPU, host=False, threads=3)
    assert [len(c) for c in host["image"].chunks] == [5, 5, 2] and host["image"].shape == (12, 32, 32, 3)
    assert isinstance(host["masks"], HostFrames) and host["masks"].nbytes == 12 * 32 * 32 * 2
    for kind, load in disk.loaders.items():
        one_by_one = torch.stack([load(f) for f in range(12)])
        assert torch.equal(torch.stack([host[kind][f] for f in range(12)]), one_by_one), kind
        assert torch.equal(device[kind], one_by_one), kind


def counting_preloads(monkeypatch) -> list[list[str]]:
    """The kinds each preload decodes, recorded as the data module's preloads run."""
    import datamodules.subject as subject_module

    decoded: list[list[str]] = []

    def preload(kinds, *args, **kwargs):
        decoded.append(list(kinds))
        return preload_frames(kinds, *args, **kwargs)

    monkeypatch.setattr(subject_module, "preload_frames", preload)
    return decoded


def test_the_stages_of_a_chain_take_the_frames_the_previous_stage_preloaded(subject: Path, monkeypatch,
                                                                              caplog) -> None:
    """Head and lips read the same images and torso backgrounds (decoded once), the torso the same images and its
    own masks (the backgrounds let go); another size or preload mode decodes anew."""
    decoded = counting_preloads(monkeypatch)
    with frames.frames_kept_between_stages() as kept:
        head = make_datamodule(subject, "device").store
        with caplog.at_level(logging.INFO, logger="datamodules.subject"):
            lips = make_datamodule(subject, "device").store
        assert lips.frames["image"] is head.frames["image"] and lips.frames["background"] is head.frames["background"]
        assert "took the image, background of 12 frames from the previous stage" in caplog.text
        torso = make_datamodule(subject, "device", background="plate", parsing_masks=True).store
        assert torso.frames["image"] is head.frames["image"] and set(kept.frames) == {"image", "masks"}
        host = make_datamodule(subject, "host", background="plate", parsing_masks=True).store
        small = make_datamodule(subject, "device", downscale=2).store
    assert decoded == [["image", "background"], ["masks"], ["image", "masks"], ["image", "background"]]
    assert isinstance(host.frames["image"], HostFrames) and small.frames["image"].shape[1:] == (16, 16, 3)
    disk = make_datamodule(subject, "disk").store
    for kind in ("image", "background"):  # the kept frames are the frames
        assert torch.equal(head.frames[kind], torch.stack([disk.loaders[kind](f) for f in range(12)])), kind
    make_datamodule(subject, "device")
    assert len(decoded) == 5 and frames.kept_frames() is None  # outside a chain nothing is kept


def test_frames_kept_for_the_next_stage_count_as_room_for_its_frames() -> None:
    kept = frames.KeptFrames()
    kept.keep({"image": torch.zeros(10, 4, 4, 3, dtype=torch.uint8), "masks": HostFrames(10, (4, 4, 2), False)})
    assert kept.counted_free(FreeMemory(None, 100)) == FreeMemory(None, 100 + 480 + 320)
    assert kept.take(("another subject",), ["image"]) == {} and kept.frames == {}


def test_a_frame_that_cannot_be_read_fails_the_threaded_preload_with_its_path(subject: Path, tmp_path: Path) -> None:
    broken = tmp_path / "sphere"
    write_synthetic_subject(broken, num_frames=12, size=32)
    (broken / "gt_imgs" / "7.jpg").write_bytes(b"not an image")
    with pytest.raises(ErnerfError, match="cannot read .*7.jpg"):
        make_datamodule(broken, "host")


def test_a_run_on_host_frames_stages_each_steps_frame_through_lightning_and_learns(tmp_path: Path, monkeypatch,
                                                                                   caplog) -> None:
    """Lightning calls the data module's `on_after_batch_transfer` before every training step: each step stages its
    own training frame (never a validation frame), and the run trains (CPU, eager)."""
    from ernerf.apps.train import train
    from tests.test_train import tiny_config

    staged, stage = [], frames.StagedFrame.stage
    monkeypatch.setattr(frames.StagedFrame, "stage", lambda self, frame: (staged.append(frame), stage(self, frame))[1])
    write_synthetic_subject(tmp_path / "data" / "sphere", num_frames=12, size=16)
    with caplog.at_level(logging.INFO, logger="datamodules"):
        metrics = train(tiny_config(tmp_path, 10, "datamodule.preload=host", "trainer.val_check_interval=10"))
    assert "datamodule.preload=host (12 frames, 0.0 GiB;" in caplog.text
    assert len(staged) == 10 and set(staged) <= set(range(10)) and len(set(staged)) > 1
    assert metrics["val/psnr"] > 5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_graphed_steps_on_host_frames_train_as_graphed_steps_on_device_frames(tmp_path: Path, caplog) -> None:
    """The CUDA-graphed step reading the frame staged from pinned host memory computes what it computes on frames
    preloaded on the GPU: the same per-step training PSNR (a frame staged late or overwritten by the next one would
    train on another frame's pixels) and close weights at the end."""
    from ernerf.apps.train import train
    from tests.test_train import logged, tiny_config

    steps, runs = 12, {}
    for mode in ("device", "host"):
        write_synthetic_subject(tmp_path / mode / "data" / "sphere", num_frames=12, size=16)
        with caplog.at_level(logging.INFO):
            train(tiny_config(tmp_path / mode, steps, "trainer=gpu", f"datamodule.preload={mode}",
                              "engine.cuda_graph=true", "engine.compile_field=false",
                              f"trainer.val_check_interval={steps}", "trainer.log_every_n_steps=1"))
        assert "training step as CUDA graphs (rays drawn in the graph)" in caplog.text
        assert f"datamodule.preload={mode} (" in caplog.text
        caplog.clear()
        run_dir = tmp_path / mode / "runs" / "sphere" / "head"
        ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
        runs[mode] = ([v for _, v in logged(run_dir, "train/psnr")], ckpt["state_dict"])
    (device_psnr, device_weights), (host_psnr, host_weights) = runs["device"], runs["host"]
    assert len(device_psnr) == steps
    assert host_psnr == pytest.approx(device_psnr, abs=0.02)
    for name, value in device_weights.items():
        if value.is_floating_point():  # (occupancy bits may flip at the threshold between two runs of one mode)
            torch.testing.assert_close(host_weights[name], value, rtol=1e-2, atol=1e-3, msg=name)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_lips_stage_trains_as_cuda_graphs_from_the_data_modules_own_builder(tmp_path: Path, caplog) -> None:
    """The lips square and the random rays in turn, each turn's batch built inside its graph by `device_batches`
    (the builder the engine takes from the data module, not a test's own): one capture per turn, and the run
    finishes."""
    from ernerf.apps.train import train
    from tests.test_train import tiny_config

    write_synthetic_subject(tmp_path / "data" / "sphere", num_frames=12, size=32)
    gpu = ["trainer=gpu", "datamodule.preload=device", "engine.cuda_graph=true", "engine.compile_field=false",
           "trainer.val_check_interval=4"]
    train(tiny_config(tmp_path, 6, "stage=head", *gpu))
    caplog.clear()
    with caplog.at_level(logging.INFO):
        train(tiny_config(tmp_path, 8, "stage=lips", "loss=lips_dssim", *gpu))
    assert "rays drawn in the graph" in caplog.text
    captures = [r.getMessage() for r in caplog.records if "captured the training step" in r.getMessage()]
    assert len(captures) == 2, captures  # the lips square's turn and the random rays' turn
    assert (tmp_path / "runs" / "sphere" / "lips" / "finished.json").is_file()
