"""Stages lips, torso and all: config of the one system, started from the previous stage, chained and skipped."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from ernerf.errors import ErnerfError
from ernerf.io.layout import SubjectLayout
from tests.conftest import compose

SIZE, TORSO_TOP = 32, 24  # the sphere "head" covers rows ~10-22; a flat torso fills the rows below
TORSO_BGR = np.array([40, 60, 220], np.uint8)
TINY = ["debug=fast", "datamodule.downscale=1", "datamodule.num_rays=128", "model.marcher.num_samples=8",
        "encoder.num_levels=4", "encoder.log2_hashmap_size=10", "encoder.desired_resolution=64", "model.grid.resolution=16",
        "datamodule.num_val_frames=1", "trainer.log_every_n_steps=1"]
TINY_TORSO = ["model.torso.num_levels=4", "model.torso.log2_hashmap_size=10", "model.torso.desired_resolution=64",
              "model.param_groups.networks.lr=1e-2"]  # a few steps must move the torso nets visibly
STEPS = {"head": 6, "lips": 4, "torso": 16}


def add_torso(root: Path) -> None:
    """Paint a torso under the synthetic head: in gt_imgs, parsing (red on disk) and torso_imgs (RGBA)."""
    layout = SubjectLayout(root)
    for path in sorted(layout.gt_dir.glob("*.jpg")):
        i = int(path.stem)
        head = (cv2.imread(str(layout.parsing(i))) == [255, 0, 0]).all(-1)
        torso = np.zeros((SIZE, SIZE), bool)
        torso[TORSO_TOP:] = True
        torso &= ~head
        gt = cv2.imread(str(path))
        gt[torso] = TORSO_BGR
        cv2.imwrite(str(path), gt, [cv2.IMWRITE_JPEG_QUALITY, 100])
        parsing = cv2.imread(str(layout.parsing(i)))
        parsing[torso] = [0, 0, 255]  # cv2 order: torso is red on disk
        cv2.imwrite(str(layout.parsing(i)), parsing)
        rgba = np.zeros((SIZE, SIZE, 4), np.uint8)
        rgba[torso] = [*TORSO_BGR, 255]
        cv2.imwrite(str(layout.torso(i)), rgba)


def overrides(tmp: Path, *extra: str) -> list[str]:
    return ["subject=sphere", f"paths.data_root={tmp / 'data'}", f"paths.runs_root={tmp / 'runs'}", *TINY, *extra]


def stage_config(tmp: Path, name: str, *extra: str):
    tiny = TINY_TORSO if name == "torso" else []
    steps = STEPS.get(name, 4)
    return compose("train", overrides(tmp, f"stage={name}", f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}",
                                      *tiny, *extra))


@pytest.fixture(scope="module")
def subject(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.synthetic import write_synthetic_subject

    tmp = tmp_path_factory.mktemp("stages")
    add_torso(write_synthetic_subject(tmp / "data" / "sphere", num_frames=12, size=SIZE))
    return tmp


@pytest.fixture(scope="module")
def chained(subject: Path) -> dict:
    """`stage=all` on the tiny subject: head -> lips -> torso."""
    from ernerf.apps.chain import run_chain
    from ernerf.apps.train import train

    results = run_chain(compose("train", overrides(subject, "stage=all")), lambda name: stage_config(subject, name), train)
    return results


def checkpoint(tmp: Path, stage: str) -> dict:
    return torch.load(tmp / "runs" / "sphere" / stage / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)


@pytest.mark.parametrize("stage", ["lips", "torso", "all"])
def test_stage_configs_compose_and_resolve(stage: str) -> None:
    cfg = compose("train", ["subject=someone", f"stage={stage}"])
    OmegaConf.resolve(cfg)
    assert cfg.stage.name == stage and cfg.run_dir == f"runs/someone/{stage}"
    if stage == "lips":
        assert cfg.datamodule.sampler._target_.endswith("LipsRaySampler") and cfg.model.scheduler.final_ratio == 0.05
        assert cfg.loss.weights.lip_perceptual == 0.01 and cfg.loss.perceptual.lpips_backbone is None
        assert cfg.loss.weights.rgb_uncertainty == 1.0  # the head losses go on
    if stage == "torso":
        assert cfg.datamodule.background == "plate" and cfg.datamodule.parsing_masks
        assert list(cfg.model.frozen) == ["field\\.", "audio_encoder\\."] and cfg.model.torso.individual_dim == 8
        assert set(cfg.loss.weights) == {"rgb", "torso_alpha", "torso_deform"}
    if stage == "all":
        assert list(cfg.stage.chain) == ["head", "lips", "torso"]
    assert compose("train", ["subject=x", "stage=lips", "loss=lips_dssim"]).loss.perceptual._target_.endswith("DssimPatchLoss")


def test_demo_torso_keeps_the_demo_head_sizes_and_draws_random_rays() -> None:
    """The torso's CPU preset: demo's encoder (so the demo head loads), uniform rays (not demo's lips square)."""
    from hydra.utils import instantiate

    from datamodules.samplers import RandomRaySampler

    demo = compose("train", ["subject=someone", "stage=head", "experiment=demo"])
    cfg = compose("train", ["subject=someone", "stage=torso", "experiment=demo_torso"])
    OmegaConf.resolve(cfg)
    assert OmegaConf.to_container(cfg.encoder) == OmegaConf.to_container(demo.encoder, resolve=True)
    assert cfg.model.grid.resolution == demo.model.grid.resolution and cfg.datamodule.downscale == 4
    assert demo.datamodule.sampler._target_.endswith("LipsRaySampler")
    sampler = instantiate(cfg.datamodule.sampler)
    assert type(sampler) is RandomRaySampler and sampler.num_rays == cfg.datamodule.num_rays


def test_a_stage_starts_from_the_earlier_stage_beside_it_then_from_the_subjects(tmp_path: Path) -> None:
    """A sweep's job of stage=all trains its stages side by side in the sweep folder (`<stage>-<swept values>`)."""
    from ernerf.apps.chain import initial_checkpoint, previous_run_dirs

    sweep = tmp_path / "runs" / "sphere" / "sweeps" / "s"
    cfg = stage_config(tmp_path, "lips", "run_name='lips-seed=1'", f"run_dir='{sweep / 'lips-seed=1'}'")
    assert previous_run_dirs(cfg, "head") == [sweep / "head-seed=1", tmp_path / "runs" / "sphere" / "head"]
    single = stage_config(tmp_path, "lips")
    assert previous_run_dirs(single, "head") == [tmp_path / "runs" / "sphere" / "head"]
    for run_dir in previous_run_dirs(cfg, "head")[::-1]:  # the subject's head first, then the sweep's own
        (run_dir / "checkpoints").mkdir(parents=True)
        (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"")
        assert initial_checkpoint(cfg) == str(run_dir / "checkpoints" / "last.ckpt")


def test_lips_without_a_head_checkpoint_names_the_command(tmp_path: Path) -> None:
    from ernerf.apps.chain import initial_checkpoint

    with pytest.raises(ErnerfError, match="python train.py stage=head subject=sphere"):
        initial_checkpoint(stage_config(tmp_path, "lips"))
    with pytest.raises(ErnerfError, match="does not exist"):
        initial_checkpoint(stage_config(tmp_path, "lips", f"init_from={tmp_path / 'nope.ckpt'}"))


def test_lips_sampler_alternates_the_lips_square_and_random_rays(subject: Path) -> None:
    from hydra.utils import instantiate

    from datamodules.subject import TrainRays

    dm = instantiate(stage_config(subject, "lips").datamodule)
    dm.setup("fit")
    rays = TrainRays(dm.data, dm.store, dm.sampler)
    for frame in (0, 3, 7):
        patch, random = rays[frame], rays[frame]
        lips = dm.data.rects_of(frame)["lips"]
        assert patch["patch_shape"] == (lips.height, lips.width) and lips.height * lips.width > 0
        assert lips.contains(patch["pixel_index"], SIZE).all() and len(patch["pixel_index"]) == lips.height * lips.width
        assert random["patch_shape"] is None and len(random["pixel_index"]) == 128


def test_all_makes_three_checkpoints_and_a_rerun_skips_them(subject: Path, chained: dict) -> None:
    from ernerf.apps.chain import run_chain
    from ernerf.apps.checkpoints import trained_stages
    from ernerf.apps.runs import read_record

    assert set(chained) == {"head", "lips", "torso"} and all(chained.values())
    for stage in ("head", "lips", "torso"):
        assert checkpoint(subject, stage)["global_step"] == STEPS[stage]
        record = read_record(subject / "runs" / "sphere" / stage)
        assert record is not None and record.offers_best == (stage != "torso")  # conf/stage/<stage>.yaml
        own = {k: v for k, v in record.metrics.items() if k.startswith("val/torso_own_")}  # callbacks/torso_own_code.py
        assert (set(own) == {f"val/torso_own_{n}" for n in ("psnr", "pasted_psnr", "seam_psnr")}) == (stage == "torso")
        assert all(math.isfinite(v) and v > 5 for v in own.values())
    torso, lips = checkpoint(subject, "torso")["stage"], checkpoint(subject, "lips")["stage"]
    assert torso == {"name": "torso", "background": "plate", "previous": ["lips", "head"]}
    assert lips == {"name": "lips", "background": "torso", "previous": ["head"]}
    found = trained_stages(subject / "runs", "sphere")  # inference's order: from what each checkpoint starts from
    assert [(t.stage.name, t.stage.background) for t in found] == [("head", "torso"), ("lips", "torso"),
                                                                    ("torso", "plate")]
    calls = []
    again = run_chain(compose("train", overrides(subject, "stage=all")), lambda name: stage_config(subject, name), calls.append)
    assert calls == [] and again == {"head": None, "lips": None, "torso": None}


def test_lips_starts_from_the_head_and_logs_lip_crops(subject: Path, chained: dict) -> None:
    from ernerf.apps.chain import initial_checkpoint

    assert initial_checkpoint(stage_config(subject, "lips")) == str(subject / "runs" / "sphere" / "head" / "checkpoints" / "last.ckpt")
    head, lips = checkpoint(subject, "head")["state_dict"], checkpoint(subject, "lips")["state_dict"]
    assert set(head) == set(lips)  # the same model, fine-tuned: no perceptual network inside the checkpoint
    assert not torch.equal(head["field.individual_codes"], lips["field.individual_codes"])
    assert "train/loss_lip_perceptual" in (subject / "runs" / "sphere" / "lips" / "csv" / "metrics.csv").read_text()
    assert list((subject / "runs" / "sphere" / "lips" / "lip_crops").glob("*.png"))


def test_a_stage_refuses_a_checkpoint_whose_audio_net_standardised_otherwise(subject: Path, chained: dict) -> None:
    """Its statistics would be dropped without an error (or new ones put under weights that never saw them)."""
    from hydra.utils import instantiate

    head = str(subject / "runs" / "sphere" / "head" / "checkpoints" / "last.ckpt")
    lips = instantiate(stage_config(subject, "lips", "model.audio_encoder.input_norm=true").model, num_frames=10)
    with pytest.raises(ErnerfError, match="input_norm=false and this stage has true: add model.audio_encoder.input_norm=false"):
        lips.load_initial_weights(head)
    instantiate(stage_config(subject, "lips").model, num_frames=10).load_initial_weights(head)  # matching: loads


def test_torso_freezes_the_head_and_learns_the_parsing_torso(subject: Path, chained: dict) -> None:
    from hydra.utils import instantiate

    from ernerf.systems.talking_head import TalkingHeadSystem

    lips, torso = checkpoint(subject, "lips")["state_dict"], checkpoint(subject, "torso")["state_dict"]
    head_keys = [k for k in lips if k.startswith(("field.", "audio_encoder."))]
    assert head_keys and all(torch.equal(lips[k], torso[k]) for k in head_keys)
    assert any(k.startswith("torso.") for k in torso)

    trained = TalkingHeadSystem.load_from_checkpoint(subject / "runs" / "sphere" / "torso" / "checkpoints" / "last.ckpt",
                                                     map_location="cpu").eval()
    torch.manual_seed(0)
    fresh = TalkingHeadSystem.load_from_checkpoint(subject / "runs" / "sphere" / "torso" / "checkpoints" / "last.ckpt",
                                                   map_location="cpu").eval()
    fresh.torso = instantiate(fresh.hparams.torso, num_frames=fresh.hparams.num_frames)  # the torso at step 0
    assert alpha_error(trained, subject) < 0.5 * alpha_error(fresh, subject)  # about 0.09 vs 0.49
    assert list((subject / "runs" / "sphere" / "torso" / "val_images").glob("val_torso_alpha_*.png"))


def alpha_error(system, subject: Path) -> float:
    """Mean |torso alpha - parsing torso mask| over the pixels the head leaves visible, in a few training frames."""
    from datamodules.subject import FrameStore, parse_subject

    data = parse_subject(subject / "data" / "sphere", "aud_mel.npy")
    store = FrameStore(data, background="plate")
    errors = []
    for frame in (0, 4, 8):
        out = system.render_image(data.poses[frame], data.intrinsics, SIZE, SIZE, data.audio_window(frame), None, frame,
                                  store.background(frame).float() / 255)
        assert out["rgb"].shape == (SIZE, SIZE, 3)  # head + torso + plate
        masks = store.parsing_masks(frame).float() / 255
        visible = masks[..., 1] < 0.5
        errors.append((out["torso_alpha"] - masks[..., 0]).abs()[visible].mean().item())
    return sum(errors) / len(errors)


def test_all_with_a_video_preprocesses_a_missing_subject_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ernerf.preprocess.pipeline as pipeline
    from ernerf.apps.chain import preprocess_overrides, run_chain, stage_overrides

    task = ["stage=all", "subject=sphere", "video=/clips/me.mp4", f"paths.data_root={tmp_path / 'data'}", "seed=3"]
    assert preprocess_overrides(task) == ["subject=sphere", "video=/clips/me.mp4", f"paths.data_root={tmp_path / 'data'}"]
    assert stage_overrides(task) == task[1:2] + task[3:]
    seen = []
    monkeypatch.setattr(pipeline, "preprocess_subject", lambda cfg, layout, video: seen.append((list(cfg.steps), layout.root, video)))
    cfg = compose("train", overrides(tmp_path, "stage=all", "video=/clips/me.mp4"))
    trained = []
    run_chain(cfg, lambda name: stage_config(tmp_path, name), trained.append,
              lambda: compose("preprocess", preprocess_overrides(task)))
    (steps, root, video), = seen
    assert "ingest" in steps and root == tmp_path / "data" / "sphere" and video == Path("/clips/me.mp4")
    assert [c.stage.name for c in trained] == ["head", "lips", "torso"]


def test_stage_all_keeps_its_hydra_folder_with_the_logs_not_in_a_stage_folder(tmp_path: Path) -> None:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from tests.conftest import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose("train", ["stage=all", "subject=anna", f"paths.runs_root={tmp_path}"],
                            return_hydra_config=True)
        single = hydra_compose("train", ["stage=head", "subject=anna", f"paths.runs_root={tmp_path}"],
                               return_hydra_config=True)
    assert Path(cfg.hydra.run.dir).parent == tmp_path / "anna" / ".logs"
    assert Path(cfg.hydra.run.dir).name.startswith("train_all_")
    assert Path(single.hydra.run.dir).parent == tmp_path / "anna" / "head" / ".hydra"


def torso_system_and_data(subject: Path):
    """The trained torso stage (eval: sample bins at their centres) and its data module, set up on the CPU."""
    from hydra.utils import instantiate

    from ernerf.systems.talking_head import TalkingHeadSystem

    system = TalkingHeadSystem.load_from_checkpoint(subject / "runs" / "sphere" / "torso" / "checkpoints" / "last.ckpt",
                                                    map_location="cpu").eval()
    datamodule = instantiate(stage_config(subject, "torso").datamodule)
    datamodule.setup("fit")
    return system, datamodule


def test_torso_steps_under_the_head_layers_equal_steps_that_march_the_head(subject: Path, chained: dict) -> None:
    """The frozen head rendered once per frame (callbacks.head_layers) gives a torso step the colours and loss that
    marching the head's rays gives, at pixels of several frames."""
    from types import SimpleNamespace

    from callbacks.head_layers import HeadLayerCache
    from ernerf.systems.talking_head import step_scalar

    system, datamodule = torso_system_and_data(subject)
    cache = HeadLayerCache(enabled=True, progress=False)
    batches = []
    last = datamodule.num_train_frames - 1
    for frame in (0, last // 2, last):
        index = datamodule.store.index(frame)
        batch = datamodule.train_rays.build(index, datamodule.data.rects_of(frame))
        batches.append(batch | {"eye": datamodule.store.eye[index], "step": step_scalar(0), "progress": step_scalar(0)})
    marched = [system.step_outputs(b) for b in batches]
    cache.on_train_start(SimpleNamespace(datamodule=datamodule, max_steps=1), system)
    assert system.head_layers is not None and system.head_layers.num_frames == datamodule.num_train_frames
    layered = [system.step_outputs(b) for b in batches]
    for batch, a, b in zip(batches, marched, layered):
        opacity = system.head_layers.over(batch["frame_index"], batch["pixel_index"], batch["bg"]).opacity
        assert (opacity > 0.5).any() and (opacity < 0.5).any()  # the rays meet the head and miss it
        torch.testing.assert_close(b["rgb"], a["rgb"], atol=2e-3, rtol=0)  # float16 layers
        torch.testing.assert_close(b["loss"], a["loss"], atol=0, rtol=1e-2)
    cache.on_train_end(SimpleNamespace(datamodule=datamodule), system)
    assert system.head_layers is None


def test_head_layers_that_would_not_fit_leave_the_head_marched(subject: Path, chained: dict,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    from types import SimpleNamespace

    from callbacks.head_layers import HeadLayerCache

    system, datamodule = torso_system_and_data(subject)
    HeadLayerCache(enabled=True, memory_share=1e-12, progress=False).on_train_start(
        SimpleNamespace(datamodule=datamodule, max_steps=100), system)
    assert system.head_layers is None and "marches the head's rays every step" in caplog.text


@pytest.mark.parametrize("steps, rendered", [(79, False), (80, True)])
def test_head_layers_by_default_only_when_the_steps_would_march_more_rays(subject: Path, chained: dict, steps: int,
                                                                         rendered: bool) -> None:
    """auto: 10 training frames of 32 x 32 pixels are 10,240 rays rendered once; 80 steps of 128 rays march as many."""
    from types import SimpleNamespace

    from callbacks.head_layers import HeadLayerCache

    system, datamodule = torso_system_and_data(subject)
    assert datamodule.num_train_frames * SIZE * SIZE == 80 * 128
    HeadLayerCache(rays_per_step=128, progress=False).on_train_start(
        SimpleNamespace(datamodule=datamodule, max_steps=steps), system)
    assert (system.head_layers is not None) == rendered


def test_the_torso_code_benchmark_scores_a_torso_stage(chained, subject: Path, capsys, monkeypatch) -> None:
    from tests.bench.scripts import bench_module

    torso_codes = bench_module("torso_codes")
    out = subject / "torso_codes.json"
    monkeypatch.setattr("sys.argv", ["torso_codes.py", "--subject", "sphere", "--run", str(subject / "runs" / "sphere" / "torso"),
                                     "--data-root", str(subject / "data"), "--downscale", "1", "--every", "4",
                                     "--device", "cpu", "--json", str(out)])
    torso_codes.main()
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    assert [row[0] for row in rows] == ["mean", "own"]
    figures = json.loads(out.read_text())
    assert figures["frames"] == [0, 4, 8] and set(figures) >= {"mean", "own frame"}
    for row in (figures["mean"], figures["own frame"]):
        assert 5 < row["psnr"] < 100 and 5 < row["pasted_psnr"] < 100 and "region_psnr_torso" in row


def test_a_torso_stage_renders_a_walk_that_passes_held_out_frames(chained, subject: Path) -> None:
    """infer.py's walk goes through every frame of the subject; those trained on give the torso their own code, the
    held-out ones (no code of their own) the mean code, instead of failing."""
    from ernerf.apps.inference import load_subject, render_planned_frame
    from ernerf.postprocess.motion import plan_motion
    from ernerf.systems.loading import load_system

    system = load_system(subject / "runs" / "sphere" / "torso" / "checkpoints" / "last.ckpt", "cpu")
    view = load_subject(subject / "data" / "sphere", "aud_mel.npy", background="plate")
    assert view.num_train == system.hparams.num_frames < len(view.poses)
    plan = plan_motion(view.poses, view.eye, len(view.poses))  # forward through all frames, the held-out ones last
    feats = np.zeros((len(view.poses), 16, int(system.hparams.feature_dim)), np.float32)
    frames = [render_planned_frame(system, view, plan, feats, t)["rgb"] for t in range(len(view.poses))]
    assert all(f.shape == (SIZE, SIZE, 3) for f in frames)
    assert [view.coded_frame(int(i)) for i in plan.indices] == [*range(view.num_train), *[None] * (len(view.poses) - view.num_train)]


def _torso_system(subject: Path):
    from ernerf.systems.loading import load_system

    return load_system(subject / "runs" / "sphere" / "torso" / "checkpoints" / "last.ckpt", "cpu")


def test_a_fitted_torso_code_draws_the_frame_its_own_code_draws(chained, subject: Path) -> None:
    """Fitting starts from the mean code and composites the head over the torso over the plate as the renderer does:
    fitted to a training frame's own render, the code's render comes close to it, far closer than the mean code's
    (a composite unlike the renderer's, or a step the wrong way, would not)."""
    from datamodules.subject import parse_subject
    from ernerf.apps.inference import frame_store
    from ernerf.apps.torso_fit import CodeFit, fit_torso_code, frame_pixels

    system = _torso_system(subject)
    data = parse_subject(subject / "data" / "sphere", "aud_mel.npy")
    store = frame_store(data, "plate")
    intrinsics = torch.tensor(data.intrinsics, dtype=torch.float32)
    frame = 3
    args = (data.poses[frame], intrinsics, data.height, data.width, store.audio_window(frame),
            data.eye[frame:frame + 1])
    bg = store.background(frame).float() / 255

    def render(torso_frame):
        return system.render_image(*args, None, bg, torso_frame=torso_frame)["rgb"]

    own, mean = render(frame), render(None)
    code = fit_torso_code(system, *args, bg, own, frame_pixels(data.height, data.width), CodeFit(steps=150))
    system.torso.use_fitted_codes(code[None])
    fitted = render(system.torso.num_coded - 1)
    assert (fitted - own).square().mean() < 0.1 * (mean - own).square().mean()


def test_a_walk_through_held_out_frames_gives_them_fitted_torso_codes_kept_beside_the_run(chained, subject: Path,
                                                                                          monkeypatch, caplog) -> None:
    """infer.py's walk reaches the held-out frames: each gets a code fitted to its image, kept in the run folder and
    read back by the next call while the checkpoint is the same; a frame beyond the coded ones is refused."""
    import ernerf.apps.torso_fit as torso_fit
    from ernerf.apps.inference import load_subject, render_planned_frame, with_held_out_codes
    from ernerf.postprocess.motion import plan_motion

    ckpt = subject / "runs" / "sphere" / "torso" / "checkpoints" / "last.ckpt"
    cache = ckpt.parents[1] / "fitted_torso_codes.pt"
    cache.unlink(missing_ok=True)
    system, view = _torso_system(subject), load_subject(subject / "data" / "sphere", "aud_mel.npy", background="plate")
    frames = len(view.poses)
    assert with_held_out_codes(view, system, ckpt, view.num_train - 1) is view  # the walk stays on trained frames
    with caplog.at_level(logging.INFO, logger=torso_fit.__name__):
        coded = with_held_out_codes(view, system, ckpt, frames - 1, progress=False)
    assert coded.num_coded == system.torso.num_coded == frames and cache.is_file()
    fitting = [r.getMessage() for r in caplog.records if "fitting torso codes" in r.getMessage()]
    assert fitting == [f"fitting torso codes to {frames - view.num_train} held-out frames the walk reaches (once; "
                       f"kept in {cache})"]  # said without a progress bar: a log or a pipe shows no bar
    plan = plan_motion(coded.poses, coded.eye, frames)
    assert [coded.coded_frame(int(i)) for i in plan.indices] == list(range(frames))
    feats = np.zeros((frames, 16, int(system.hparams.feature_dim)), np.float32)
    held_out = render_planned_frame(system, coded, plan, feats, frames - 1)["rgb"]
    assert held_out.shape == (SIZE, SIZE, 3)
    fitted = system.torso.fitted_codes.clone()
    assert not torch.allclose(fitted, system.torso.code(None).expand_as(fitted))

    def no_fitting(*args, **kwargs):
        raise AssertionError("the codes kept beside the run were fitted again")

    again = _torso_system(subject)
    monkeypatch.setattr(torso_fit, "fit_torso_codes", no_fitting)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=torso_fit.__name__):
        assert with_held_out_codes(view, again, ckpt, frames - 1).num_coded == frames
    assert torch.equal(again.torso.fitted_codes, fitted)
    assert not any("fitting torso codes" in r.getMessage() for r in caplog.records)  # read back, nothing to say
    with pytest.raises(ErnerfError, match="outside the"):
        again.render_image(*(torch.from_numpy(view.poses[0]), view.intrinsics, SIZE, SIZE,
                             torch.zeros(8, 16, int(system.hparams.feature_dim)), None, None,
                             torch.zeros(SIZE, SIZE, 3)), torso_frame=frames)
    ckpt.touch()  # a checkpoint written again: its codes no longer hold
    with pytest.raises(AssertionError, match="fitted again"):
        with_held_out_codes(view, _torso_system(subject), ckpt, frames - 1)


def test_the_torso_code_benchmark_fits_held_out_frames(chained, subject: Path, capsys, monkeypatch) -> None:
    from tests.bench.scripts import bench_module

    torso_codes = bench_module("torso_codes")
    out = subject / "torso_codes_held_out.json"
    run = str(subject / "runs" / "sphere" / "torso")
    monkeypatch.setattr("sys.argv", ["torso_codes.py", "--subject", "sphere", "--run", run,
                                     "--data-root", str(subject / "data"), "--downscale", "1", "--held-out",
                                     "--fit-steps", "20", "--device", "cpu", "--json", str(out)])
    torso_codes.main()
    figures = json.loads(out.read_text())
    assert figures["frames"] == [10, 11]
    assert set(figures) >= {"mean", "mean, right half", "fitted left, right half", "fitted whole frame"}
    assert "region_psnr_torso" in figures["fitted whole frame"]
    assert "region_psnr_torso" not in figures["mean, right half"]  # a half frame has no region figures
    for row in figures.values():
        if isinstance(row, dict):
            assert 5 < row["psnr"] <= 100


def test_stage_all_resolves_an_overrides_interpolation_in_each_stages_config(tmp_path: Path, monkeypatch) -> None:
    """`stage=all '+callbacks.clock.path=${run_dir}/clock.csv'`: each stage's file in its own run folder, not all
    three in the chain's (`.../all`)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    import ernerf.apps.train as train_app
    from tests.conftest import CONF_DIR

    task = ["stage=all", "subject=anna", f"paths.runs_root={tmp_path}", "+clock_path=${run_dir}/clock.csv"]
    paths = {}

    def chain(cfg, compose_stage, train_fn, compose_preprocess):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            for name in cfg.stage.chain:
                paths[name] = compose_stage(name).clock_path
        return {name: None for name in cfg.stage.chain}

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose("train", task, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    try:
        monkeypatch.setattr(train_app, "run_chain", chain)
        monkeypatch.setattr(train_app, "print_summary", lambda *args: None)
        train_app.train_command(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]))
    finally:
        HydraConfig.instance().cfg = None
    assert paths == {name: str(tmp_path / "anna" / name / "clock.csv") for name in ("head", "lips", "torso")}


def test_the_torso_runs_own_code_figures_score_the_weights_its_validation_scores(subject: Path, chained: dict) -> None:
    """val/torso_own_* at a validation are the figures of the weights that validation scores (the EMA of the weights,
    swapped in for it), not of the raw weights of that step: a run ending on an EMA update keeps that model in its
    checkpoint, which scores the same figures again."""
    from types import SimpleNamespace

    from hydra.utils import instantiate

    from callbacks.torso_own_code import TorsoOwnCodeScore
    from ernerf.apps.train import train
    from ernerf.systems.loading import load_system

    cfg = stage_config(subject, "torso", "trainer.max_steps=10", "trainer.val_check_interval=10", "run_name=torso_own",
                       "callbacks.ema.every_n_steps=5")
    metrics = train(cfg)
    system = load_system(subject / "runs" / "sphere" / "torso_own" / "checkpoints" / "last.ckpt", device="cpu")
    datamodule = instantiate(stage_config(subject, "torso").datamodule)
    datamodule.setup("fit")
    logged: dict[str, float] = {}
    system.log = lambda name, value, **options: logged.__setitem__(name, value)
    with torch.no_grad():
        TorsoOwnCodeScore(frames=16).score(SimpleNamespace(datamodule=datamodule), system)
    for name in ("val/torso_own_psnr", "val/torso_own_pasted_psnr", "val/torso_own_seam_psnr"):
        assert abs(logged[name] - metrics[name]) < 0.01, (name, logged[name], metrics[name])
