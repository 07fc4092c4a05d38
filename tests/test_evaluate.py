"""evaluate.py: known answers for the new metric functions, lip-sync on real audio, and end to end on real frames."""

from __future__ import annotations

import csv
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ernerf.errors import ErnerfError
from ernerf.apps.evaluation.evaluate import resolve_cross_audio
from ernerf.apps.evaluation.figures import Findings, audio_sync_findings, image_findings, lip_findings
from ernerf.apps.checkpoints import audio_extractor as evaluation_extractor
from ernerf.apps.evaluation.frames import Rendered, resolve_target
from ernerf.metrics.face import au45_at_open_level, jitter_valid, mouth_points
from tests.conftest import compose, shared_clip

INNER_LIPS = ((13, 14), (82, 87), (312, 317))  # mediapipe upper/lower inner-lip pairs (mouth_opening reads them)


def touch_checkpoint(runs: Path, subject: str, stage: str) -> Path:
    path = runs / subject / stage / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


# ---------------------------------------------------------------- metric functions, known answers


def test_au45_at_a_given_open_level() -> None:
    au = au45_at_open_level(np.array([0.30, 0.40, 0.15, 0.045, 0.0]), open_level=0.30, closed_ratio=0.15)
    assert au == pytest.approx([0.0, 0.0, 5 * 0.5 / 0.85, 5.0, 5.0])  # open (or wider) -> 0, closed_ratio -> 5


def test_jitter_is_zero_for_steady_motion_and_skips_gaps() -> None:
    t = np.arange(10, dtype=float)
    steady = np.stack([t * 2, t * 0.5], -1)[:, None, :]  # [T, 1, 2] constant velocity
    assert jitter_valid(steady, np.ones(10, bool)) == pytest.approx(0.0)
    shaky = steady.copy()
    shaky[::2, 0, 0] += 1.0  # +-1 px zigzag: second difference 2 px every frame
    assert jitter_valid(shaky, np.ones(10, bool)) == pytest.approx(2.0)
    holes = shaky.copy()
    holes[4] = 1e6  # a missed frame's junk must not count
    valid = np.ones(10, bool)
    valid[4] = False
    assert jitter_valid(holes, valid) == pytest.approx(2.0)
    assert np.isnan(jitter_valid(steady, np.zeros(10, bool)))


def random_mesh(rng: np.random.Generator, frames: int) -> np.ndarray:
    return rng.uniform(100, 400, (frames, 478, 3)).astype(np.float32)


def test_lmd_is_mean_centred_per_frame_and_in_pixels() -> None:
    rng = np.random.default_rng(0)
    gt = random_mesh(rng, 5)
    shifted = gt + np.array([6.0, 8.0, 0.0], np.float32)  # the whole face moved 10 px
    ok = np.ones(5, bool)
    found = lip_findings(shifted, ok, gt, ok)
    assert found.values["lmd"] == pytest.approx(0.0, abs=1e-4)
    assert found.values["lmd_uncentred"] == pytest.approx(10.0, abs=1e-4)
    bent = gt.copy()
    mouth = mouth_points(gt)
    assert mouth.shape == (5, 20, 2)
    from ernerf.preprocess.landmarks import IBUG68_FROM_MESH

    corner = IBUG68_FROM_MESH[48]
    bent[:, corner, 0] += 20.0  # one of 20 mouth points off by 20 px: 1 px of mean distance (+ centring shift)
    value = lip_findings(bent, ok, gt, ok).values["lmd"]
    assert 0.9 < value < 2.0


def mesh_with_mouth(opening: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A mesh whose inner lips part by `opening` (relative to the eye-corner distance of 100 px). # [T] -> [T,478,3]"""
    mesh = np.tile(rng.uniform(150, 350, (1, 478, 3)), (len(opening), 1, 1))
    mesh[:, 33, :2], mesh[:, 263, :2] = (200, 200), (300, 200)
    for upper, lower in INNER_LIPS:
        mesh[:, upper, :2] = np.stack([np.full(len(opening), 250.0), 320 - 50 * opening], -1)
        mesh[:, lower, :2] = np.stack([np.full(len(opening), 250.0), 320 + 50 * opening], -1)
    return mesh


def test_lip_sync_figure_is_high_when_the_mouth_follows_the_audio_and_near_zero_shuffled() -> None:
    from ernerf.io.audio import load_audio
    from ernerf.metrics.lipsync import audio_energy, mouth_opening

    wav = load_audio(shared_clip("audio/radio31_8s.wav"), sr=16000)
    energy = audio_energy(wav, 16000, 200)
    rng = np.random.default_rng(1)
    follows = np.roll(energy / energy.max(), 1) * 0.4 + rng.normal(0, 0.01, 200)  # lags the sound by one frame
    mouth = mouth_opening(mesh_with_mouth(follows, rng))
    synced = audio_sync_findings(mouth, energy, "sync").values["sync"]
    shuffled = audio_sync_findings(mouth[rng.permutation(200)], energy, "sync").values["sync"]
    assert synced > 0.9, synced
    assert abs(shuffled) < 0.25, shuffled
    silent = audio_sync_findings(mouth, np.zeros(200), "sync")
    assert "silent" in silent.unavailable["sync"]


def test_image_figures_known_offset_and_small_face_box() -> None:
    truth = np.full((2, 32, 32, 3), 100, np.uint8)
    render = truth + 10  # every pixel 10 levels off: PSNR = 20 log10(255 / 10)
    rects = np.array([[4, 12, 4, 12]] * 2)  # a 9 px face box: too small for SSIM's 11 px window
    found = image_findings(Rendered(np.array([5, 6]), render, truth, rects, 0.0), None, "no torchvision")
    assert found.values["psnr"] == pytest.approx(20 * np.log10(25.5), abs=1e-3)
    assert found.values["psnr_face"] == pytest.approx(found.values["psnr"], abs=1e-3)
    assert "ssim_face" in found.unavailable and found.unavailable["lpips"] == "no torchvision"
    assert len(found.curves["psnr"]) == 2


def test_lpips_reports_why_it_is_unavailable(tmp_path: Path) -> None:
    import importlib.util

    from ernerf.metrics.perceptual import lpips_scorer

    score, reason = lpips_scorer("alex", tmp_path / "missing.pth")
    assert score is None
    if importlib.util.find_spec("torchvision") is None:
        assert "torchvision" in reason
    else:
        assert "missing.pth" in reason
    assert "unknown LPIPS net" in lpips_scorer("resnet")[1]


def test_lpips_builds_torchmetrics_public_class_from_the_local_weights_only(tmp_path: Path, monkeypatch) -> None:
    """The backbone file given is where torchvision finds it while torchmetrics' LPIPS is built (nothing else is
    asked of the hub cache, so nothing is downloaded); the user's hub folder is back afterwards."""
    import torch
    import torchmetrics.image.lpip as lpip

    from ernerf.metrics.perceptual import BACKBONE_FILES, lpips_metric

    weights = tmp_path / "my_alexnet.pth"
    weights.write_bytes(b"alexnet weights")
    seen = {}

    class Recorder:
        def __init__(self, net_type: str, normalize: bool) -> None:
            found = Path(torch.hub.get_dir()) / "checkpoints" / BACKBONE_FILES[net_type]
            seen.update(net=net_type, normalize=normalize, content=found.read_bytes())

    monkeypatch.setattr(lpip, "LearnedPerceptualImagePatchSimilarity", Recorder)
    before = torch.hub.get_dir()
    assert isinstance(lpips_metric("alex", weights), Recorder)
    assert seen == {"net": "alex", "normalize": False, "content": b"alexnet weights"}
    assert torch.hub.get_dir() == before


def test_targets_and_cross_audio_resolution(tmp_path: Path) -> None:
    with pytest.raises(ErnerfError, match="python train.py stage=head subject=anna"):
        resolve_target(tmp_path, "anna", None)
    head = touch_checkpoint(tmp_path, "anna", "head")
    default = resolve_target(tmp_path, "anna", None)
    assert (default.checkpoint, default.out_dir, default.run_dir) == (head, tmp_path / "anna" / "eval", head.parents[1])
    by_dir = resolve_target(tmp_path, "anna", str(head.parents[1]))
    assert by_dir.out_dir == head.parents[1] / "eval" and by_dir.stage == "head"
    loose = tmp_path / "elsewhere" / "best.ckpt"
    loose.parent.mkdir()
    loose.write_bytes(b"")
    by_file = resolve_target(tmp_path, "anna", str(loose))
    assert by_file.out_dir == loose.parent / "eval" and by_file.run_dir is None
    with pytest.raises(ErnerfError, match="neither a run folder"):
        resolve_target(tmp_path, "anna", str(tmp_path / "nope"))
    none, reason = resolve_cross_audio(None)  # no default clip: the figure is unavailable and says how to get it
    assert none == {} and "cross_audio=<" in reason and resolve_cross_audio([])[0] == {}
    obama, radio = shared_clip("audio/obama_5s.wav"), shared_clip("audio/radio31_8s.wav")
    assert resolve_cross_audio(str(obama))[0] == {"obama_5s": obama}  # one file, as before
    two = compose("evaluate", ["subject=anna", f"cross_audio=[{obama},{radio}]"]).cross_audio  # Hydra's list
    assert resolve_cross_audio(two) == ({"obama_5s": obama, "radio31_8s": radio}, "")
    (tmp_path / "a").mkdir()
    twin = tmp_path / "a" / "obama_5s.wav"
    twin.write_bytes(obama.read_bytes())
    odd = tmp_path / "a" / "Zoë's take 2.wav"
    odd.write_bytes(b"")
    assert list(resolve_cross_audio([obama, twin, odd])[0]) == ["obama_5s", "obama_5s_2", "Zoë_s_take_2"]
    with pytest.raises(ErnerfError, match=r"cross_audio file .*x\.wav not found.*cross_audio=\[a\.wav,b\.wav\]"):
        resolve_cross_audio([str(obama), str(tmp_path / "x.wav")])


def test_findings_merge_keeps_reasons() -> None:
    a = Findings(values={"psnr": 30.0})
    a.skip(["lpips", "syncnet_conf"], "no weights")
    merged = a.merge(Findings(values={"lmd": 2.0}))
    assert merged.values == {"psnr": 30.0, "lmd": 2.0} and merged.unavailable["syncnet_conf"] == "no weights"


# ---------------------------------------------------------------- how long it takes, said at the start


class OnDevice:
    def __init__(self, kind: str) -> None:
        import torch

        self.device = torch.device(kind)


def test_cross_frames_counts_one_frame_per_40_ms_up_to_the_cap() -> None:
    from ernerf.apps.evaluation.evaluate import cross_frames

    obama, radio = shared_clip("audio/obama_5s.wav"), shared_clip("audio/radio31_8s.wav")
    assert cross_frames(obama, 5.0) == 125 and cross_frames(radio, 5.0) == 125  # capped at 5 s
    assert cross_frames(radio, 20.0) == 200 and cross_frames(obama, 0.01) == 3  # the file's length; at least 3


def test_duration_note_says_how_long_a_cpu_evaluation_takes_and_what_is_quicker(caplog) -> None:
    from ernerf.apps.evaluation.evaluate import duration_note

    sources = {"obama_5s": shared_clip("audio/obama_5s.wav"), "radio31_8s": shared_clip("audio/radio31_8s.wav")}
    full = compose("evaluate", ["subject=anna"])
    half = compose("evaluate", ["subject=anna", "cross_downscale=2"])
    with caplog.at_level(logging.INFO, logger="ernerf.apps.evaluation.evaluate"):
        duration_note(full, OnDevice("cpu"), sources)(1.0, 512, 23)  # 23 + 2 x 125 frames of 1 s: 273 s
        assert len(caplog.records) == 1
        said = caplog.records[0].getMessage()
        assert "23 validation frames at 512 px and 250 cross-driven frames at 512 px" in said
        assert "about 5 minutes" in said and "cross_downscale=2" in said and "cross_max_seconds=2.5" in said
        caplog.clear()
        duration_note(half, OnDevice("cpu"), sources)(1.0, 512, 23)  # a quarter of the pixels: 23 + 62.5 s, short
        duration_note(full, OnDevice("meta"), sources)(10.0, 512, 23)  # not a CPU: nothing to warn about
        duration_note(full, OnDevice("cpu"), {})(2.0, 512, 50)  # 100 s
        assert not caplog.records
        duration_note(half, OnDevice("cpu"), sources)(2.0, 512, 23)  # 46 + 125 s
        said = caplog.records[0].getMessage()
        assert "cross-driven frames at 256 px" in said and "about 3 minutes" in said and "cross_downscale=4" in said


# ---------------------------------------------------------------- end to end on real frames


@pytest.fixture(scope="module")
def subject34(tmp_path_factory: pytest.TempPathFactory):
    """34 real frames of trump_10s.mp4 (validation = the last 4) in the mini-subject layout of test_infer."""
    from tests.postprocess.mini_subject import write_mini_subject

    root = Path(tmp_path_factory.mktemp("data")) / "mini"
    return write_mini_subject(root, shared_clip("train/trump_10s.mp4"), num_frames=34)


def test_evaluate_real_frames_with_a_perfect_renderer(tmp_path: Path, subject34, monkeypatch) -> None:
    """A renderer returning the true crops: near-perfect PSNR, LMD ~0, mouth curves alike; every output written."""
    import ernerf.apps.evaluation.evaluate as evaluation
    from ernerf.apps.evaluation import evaluate_from_config
    from ernerf.apps.inference import load_subject
    from tests.postprocess.mini_subject import CropRenderer

    runs = tmp_path / "runs"
    touch_checkpoint(runs, "mini", "head")
    (runs / "mini" / "head" / "csv").mkdir()  # the run logged to CSV
    view = load_subject(subject34.root, "aud_mel.npy", downscale=4)
    perfect = CropRenderer(subject34, view.poses, view.img_ids)
    sources = [shared_clip("audio/obama_5s.wav"), shared_clip("audio/radio31_8s.wav")]
    cfg = compose("evaluate", [f"paths.data_root={subject34.root.parent}", f"paths.runs_root={runs}", "subject=mini",
                               "downscale=4", f"cross_audio=[{sources[0]},{sources[1]}]", "cross_max_seconds=1.0"])
    built = []  # the audio extractors made: one for all the sources (a speech model loads once)

    def counted(*args):
        built.append(evaluation_extractor(*args))
        return built[-1]

    monkeypatch.setattr(evaluation, "audio_extractor", counted)
    result = evaluate_from_config(cfg, system_loader=lambda path, device: perfect)
    assert len(built) == 1

    report = json.loads((runs / "mini" / "eval" / "metrics.json").read_text())
    metrics = report["metrics"]
    assert report["frames"]["validation"] == [30, 31, 32, 33] and report["frames"]["height"] == 128
    # the renderer and the ground-truth loader downsize the same crops with different filters: not bit-identical
    assert metrics["psnr"] > 45 and metrics["ssim"] > 0.99 and metrics["psnr_face"] > 40
    assert metrics["lmd"] < 0.5 and metrics["sync_corr"] > 0.95
    assert metrics["pose_jitter_ratio"] == pytest.approx(1.0, abs=0.25)
    assert metrics["lpips"] == "unavailable" and report["unavailable"]["lpips"]
    assert "audio.wav is missing" in report["unavailable"]["sync_audio_corr"]  # the mini subject has no audio.wav
    each = [metrics["cross_sync_audio_corr_obama_5s"], metrics["cross_sync_audio_corr_radio31_8s"]]
    assert all(isinstance(v, float) for v in each) and each[0] != each[1]
    assert metrics["cross_sync_audio_corr"] == pytest.approx(np.mean(each))  # the summary is their mean
    assert report["cross_audio"] == {"obama_5s": str(sources[0]), "radio31_8s": str(sources[1])}
    assert len(report["per_frame"]["cross_energy_obama_5s"]) == len(report["per_frame"]["cross_energy_radio31_8s"]) == 25
    assert evaluation.cross_frames(sources[0], 1.0) == 25  # what the duration note counts is what was rendered
    assert report["per_frame"]["cross_energy_obama_5s"] != report["per_frame"]["cross_energy_radio31_8s"]
    page = (result.out_dir / "index.html").read_text()
    assert all(f"<td>cross_sync_audio_corr_{n}</td>" in page and str(sources[k]) in page
               for k, n in enumerate(("obama_5s", "radio31_8s")))
    from PIL import Image

    assert Image.open(result.out_dir / "mouth.png").size[1] > 1.4 * 5.5 * 90  # a panel per source: 3 panels, not 2
    shares = [metrics[f"region_share_{r}"] for r in ("face", "hair", "neck", "torso", "background")]
    assert sum(shares) == pytest.approx(1.0) and metrics["region_psnr_face"] > 40  # where the (small) error is
    for name in ("frames.png", "regions.png", "psnr.png", "mouth.png"):
        assert (result.out_dir / name).stat().st_size > 5000
        assert f'src="{name}"' in (result.out_dir / "index.html").read_text()
    with open(runs / "mini" / "head" / "csv" / "test" / "metrics.csv") as f:
        row = next(csv.DictReader(f))
    assert float(row["test/psnr"]) == pytest.approx(metrics["psnr"]) and float(row["test/lmd"]) == pytest.approx(metrics["lmd"])
    for name in ("cross_sync_audio_corr_obama_5s", "cross_sync_audio_corr_radio31_8s"):  # one logger key per source
        assert float(row[f"test/{name}"]) == pytest.approx(metrics[name])


def fresh_checkpoint(runs: Path, *overrides: str) -> Path:
    """A TalkingHeadSystem checkpoint of the mini subject, fresh weights, at global step 7."""
    import lightning as L
    import torch
    from hydra.utils import instantiate

    system = instantiate(compose("train", ["subject=mini", "debug=fast", *overrides]).model, num_frames=30)
    ckpt = touch_checkpoint(runs, "mini", "head")
    torch.save({"state_dict": system.state_dict(), "hyper_parameters": dict(system.hparams), "global_step": 7,
                "pytorch-lightning_version": L.__version__}, ckpt)
    return ckpt


def test_evaluate_py_on_a_trained_system(tmp_path: Path, subject34, capsys, monkeypatch) -> None:
    """evaluate.py end to end: a TalkingHeadSystem checkpoint (fresh weights) renders the validation frames."""
    from ernerf.apps.evaluation import evaluate_command

    monkeypatch.setattr("ernerf.progress.REDRAW_SECONDS", 0.0)  # a bar drawn at every frame, however fast they come

    ckpt = fresh_checkpoint(tmp_path / "runs")
    cfg = compose("evaluate", ["subject=mini", f"paths.data_root={subject34.root.parent}",
                               f"paths.runs_root={tmp_path / 'runs'}", f"run={ckpt}", "downscale=16", "device=cpu",
                               "progress=true"])
    evaluate_command(cfg)  # what evaluate.py runs (Hydra's own parsing is what compose() does)
    stdout, stderr = capsys.readouterr()
    assert re.search(r"rendering validation frames: .*\d/4 frames \[\d\d:\d\d<\d\d:\d\d", stderr), stderr
    out = ckpt.parent / "eval"
    report = json.loads((out / "metrics.json").read_text())
    assert report["step"] == 7 and report["frames"]["height"] == 32
    assert 0 < report["metrics"]["psnr"] < 100 and report["metrics"]["cross_sync_audio_corr"] == "unavailable"
    # a fresh network is see-through: the face in the mini subject's plate (a real frame) is meshed, but it does not
    # move with the ground truth
    assert report["metrics"]["lmd_uncentred"] > 2.0
    assert all((out / n).is_file() for n in ("frames.png", "psnr.png", "mouth.png", "index.html"))
    assert "lpips" in stdout and "torchvision" in stdout and str(out / "metrics.json") in stdout
    assert (out / "csv" / "metrics.csv").is_file()  # no logger folder in the run: a CSV beside the report


def test_evaluate_py_cross_driving_says_how_long_and_shows_its_progress(tmp_path: Path, subject34, capsys, caplog,
                                                                        monkeypatch) -> None:
    """The cross-driven frames render at 512 / cross_downscale under their own progress bar; the note on how long the
    renders take comes once, after the first frame; metrics.json and the summary say where the time went."""
    import ernerf.apps.evaluation.evaluate as evaluation

    monkeypatch.setattr(evaluation, "LONG_RUN_SECONDS", 0.0)  # every CPU run is long
    monkeypatch.setattr("ernerf.progress.REDRAW_SECONDS", 0.0)  # a bar drawn at every frame, however fast they come
    ckpt = fresh_checkpoint(tmp_path / "runs")
    cfg = compose("evaluate", ["subject=mini", f"paths.data_root={subject34.root.parent}",
                               f"paths.runs_root={tmp_path / 'runs'}", f"run={ckpt}", "downscale=16", "device=cpu",
                               "progress=true", f"cross_audio={shared_clip('audio/obama_5s.wav')}",
                               "cross_max_seconds=0.2", "cross_downscale=32"])
    with caplog.at_level(logging.INFO, logger="ernerf.apps.evaluation.evaluate"):
        evaluation.evaluate_command(cfg)
    stdout, stderr = capsys.readouterr()
    # the bar of the 5 cross-driven frames, with its time left
    assert re.search(r"rendering obama_5s\.wav at 16 px: .*\d/5 frames \[\d\d:\d\d<\d\d:\d\d", stderr), stderr
    notes = [r.getMessage() for r in caplog.records if "on the CPU" in r.getMessage()]
    assert len(notes) == 1 and "4 validation frames at 32 px and 5 cross-driven frames at 16 px" in notes[0]
    report = json.loads((ckpt.parent / "eval" / "metrics.json").read_text())
    assert report["frames"]["height"] == 32 and report["frames"]["cross_downscale"] == 32
    assert len(report["per_frame"]["cross_energy_obama_5s"]) == 5
    seconds = report["seconds"]
    assert list(seconds) == ["load", "validation renders", "validation figures", "own torso codes", "cross-driving",
                             "report", "total"]
    assert seconds["total"] == pytest.approx(sum(v for k, v in seconds.items() if k != "total"), abs=0.3)
    assert re.search(r"took \d+ s: load \d+ s, validation renders \d+ s, .*cross-driving \d+ s", stdout), stdout


def test_face_figures_say_why_when_the_mesher_is_missing(monkeypatch) -> None:
    import ernerf.apps.evaluation.figures as evaluation

    monkeypatch.setattr(evaluation, "mesher_missing", lambda: "mediapipe not installed")
    found = evaluation.face_and_sync(None, None, np.zeros(3))
    assert set(found.unavailable) == set(evaluation.FACE_NAMES) and not found.values
    assert found.unavailable["lmd"] == "mediapipe not installed"


# ---------------------------------------------------------------- renders=: another method's frames, read from files


def write_frames(folder: Path, frames: np.ndarray, name: str = "mini_ep0001_{:04d}_rgb.png") -> list[Path]:
    """uint8 [T, H, W, 3] frames as PNG files named as ER-NeRF names its validation renders (from 1)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / name.format(k + 1) for k in range(len(frames))]
    for path, frame in zip(paths, frames):
        Image.fromarray(frame).save(path)
    return paths


SMALL_FIELD = ["encoder.num_levels=4", "encoder.log2_hashmap_size=10", "encoder.desired_resolution=64",
               "model.marcher.num_samples=8", "model.grid.resolution=16"]  # 4 frames at 32 px in seconds, not 15


def test_frame_files_are_the_images_of_a_folder_in_name_order_numbers_by_value(tmp_path: Path) -> None:
    from ernerf.apps.evaluation.frames import frame_files

    for name in ("f_10.png", "f_2.JPG", "f_1.jpeg", "f_3.txt", "f_0.png.bak"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "f_4.png").mkdir()  # a folder is no frame
    assert [p.name for p in frame_files(tmp_path)] == ["f_1.jpeg", "f_2.JPG", "f_10.png"]


def test_our_renders_read_back_from_png_files_score_as_the_checkpoint(tmp_path: Path, subject34, monkeypatch,
                                                                      caplog) -> None:
    """renders= on the PNG files of a checkpoint's own renders gives the figures of evaluating that checkpoint: the
    same frames, in the same order, against the same ground truth, meshed by the same mesher. A fifth file, after
    them, is left out, with a warning."""
    import ernerf.apps.evaluation.evaluate as evaluation

    kept, real_render_subject = [], evaluation.render_subject

    def spy(*args, **kwargs):  # keeps the checkpoint's renders
        rendered, data = real_render_subject(*args, **kwargs)
        kept.append(rendered)
        return rendered, data

    monkeypatch.setattr(evaluation, "render_subject", spy)
    ckpt = fresh_checkpoint(tmp_path / "runs", *SMALL_FIELD)
    common = ["subject=mini", f"paths.data_root={subject34.root.parent}", f"paths.runs_root={tmp_path / 'runs'}",
              "downscale=16", "device=cpu", "progress=false", "report_frames=2"]
    ours = evaluation.evaluate_from_config(compose("evaluate", [*common, f"run={ckpt}", "save_renders=true",
                                                                f"output={tmp_path / 'ours'}"])).report
    saved = sorted((tmp_path / "ours" / "renders").iterdir())  # save_renders: each render as it was scored
    assert [p.name for p in saved] == ["000030.png", "000031.png", "000032.png", "000033.png"]
    assert np.array_equal(np.stack([np.array(Image.open(p)) for p in saved]), kept[0].renders)
    folder = tmp_path / "frames"
    write_frames(folder, np.concatenate([kept[0].renders, 255 - kept[0].renders[:1]]))
    (folder / "notes.txt").write_text("not a frame")
    out = tmp_path / "scored"
    with caplog.at_level(logging.WARNING, logger="ernerf.apps.evaluation.frames"):
        read = evaluation.evaluate_from_config(compose("evaluate", [*common, f"renders={folder}", f"output={out}"]))
    assert "holds 5 PNG/JPG files for 4 validation frames: the first 4 are scored" in caplog.text
    theirs = read.report
    assert theirs["frames"]["validation"] == ours["frames"]["validation"] == [30, 31, 32, 33]
    assert theirs["frames"]["height"] == 32
    for name in ("psnr", "psnr_face", "region_psnr_face", "region_psnr_torso", "region_psnr_background"):
        assert theirs["metrics"][name] == pytest.approx(ours["metrics"][name], abs=0.05), name
    assert theirs["per_frame"]["psnr"] == pytest.approx(ours["per_frame"]["psnr"], abs=0.05)  # frame by frame
    assert theirs["metrics"]["ssim"] == pytest.approx(ours["metrics"]["ssim"], abs=1e-3)
    assert isinstance(ours["metrics"]["lmd"], float) and ours["metrics"]["lmd_uncentred"] > 2.0  # a real mouth error
    for name in ("lmd", "lmd_uncentred"):
        assert theirs["metrics"][name] == pytest.approx(ours["metrics"][name], abs=0.1), name
    assert theirs["metrics"]["sync_corr"] == pytest.approx(ours["metrics"]["sync_corr"], abs=0.02)
    assert (theirs["checkpoint"], theirs["renders"], theirs["stage"], theirs["step"]) == (None, str(folder), None, None)
    assert theirs["metrics"]["cross_sync_audio_corr"] == "unavailable"
    assert f"renders={folder}" in theirs["unavailable"]["cross_sync_audio_corr"]
    assert json.loads((out / "metrics.json").read_text())["renders"] == str(folder)
    for name in ("frames.png", "regions.png", "psnr.png", "mouth.png", "index.html"):
        assert (out / name).stat().st_size > 1000, name
    assert f"frames read from {folder}" in (out / "index.html").read_text()
    assert (out / "csv" / "metrics.csv").is_file() and not (folder / "metrics.json").exists()


def test_renders_too_few_or_of_another_size_are_refused_in_one_line(tmp_path: Path, subject34) -> None:
    from ernerf.apps.evaluation import evaluate_from_config

    def evaluate(folder: Path) -> None:
        evaluate_from_config(compose("evaluate", [
            "subject=mini", f"paths.data_root={subject34.root.parent}", f"paths.runs_root={tmp_path / 'runs'}",
            "downscale=4", f"renders={folder}", f"output={tmp_path / 'out'}"]))

    few = tmp_path / "few"
    write_frames(few, np.zeros((3, 128, 128, 3), np.uint8))  # 4 validation frames
    with pytest.raises(ErnerfError, match=rf"^renders={few} holds 3 PNG/JPG frames, 4 are needed: .*max_frames=3") as e:
        evaluate(few)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ErnerfError, match=rf"^renders={empty} holds 0 PNG/JPG frames, 4 are needed: [^(]*$"):
        evaluate(empty)
    full = tmp_path / "full"
    write_frames(full, np.zeros((4, 512, 512, 3), np.uint8))  # full size, evaluated at downscale=4
    with pytest.raises(ErnerfError, match=r"mini_ep0001_0001_rgb.png is 512x512, the subject's frames are 128x128 "
                                          r"at downscale=4") as wrong:
        evaluate(full)
    assert "\n" not in str(e.value) + str(wrong.value)
    assert not (tmp_path / "out" / "metrics.json").exists()


@pytest.mark.parametrize("overrides, words", [
    (["run=runs/anna/head"], "run= names a checkpoint to render: give one of them"),
    (["stage_name=head"], "stage= names a checkpoint to render"),
    ([f"cross_audio={shared_clip('audio/obama_5s.wav')}"], "leave cross_audio out (cross-driving figures are "
                                                           "unavailable with renders=)"),
])
def test_renders_excludes_the_options_of_a_checkpoint(tmp_path: Path, overrides: list[str], words: str) -> None:
    from ernerf.apps.preflight import check_renders

    cfg = compose("evaluate", ["subject=anna", f"renders={tmp_path}", f"output={tmp_path / 'out'}", *overrides])
    with pytest.raises(ErnerfError, match=re.escape(words)):
        check_renders(cfg)


def test_renders_needs_an_existing_folder_and_an_output_of_its_own(tmp_path: Path) -> None:
    from ernerf.apps.preflight import check_renders

    def check(*overrides: str) -> Path:
        return check_renders(compose("evaluate", ["subject=anna", *overrides]))

    frames = tmp_path / "frames"
    with pytest.raises(ErnerfError, match=rf"renders={frames} is not a folder"):
        check(f"renders={frames}", f"output={tmp_path / 'out'}")
    frames.mkdir()
    with pytest.raises(ErnerfError, match=rf"renders= needs output=<folder> .*output={frames}_eval"):
        check(f"renders={frames}")
    with pytest.raises(ErnerfError, match="is the renders= folder"):
        check(f"renders={frames}", f"output={frames}/.")
    assert check(f"renders={frames}", f"output={tmp_path / 'out'}") == frames and (tmp_path / "out").is_dir()


def test_pasted_figures_weigh_the_paste_and_its_seam() -> None:
    from ernerf.metrics.image import pasted_figures

    truths = np.zeros((1, 1, 3, 3), np.uint8)
    renders = truths.copy()
    renders[0, 0, 0] = 51  # 0.2 off where the paste takes the render whole
    renders[0, 0, 1] = 102  # 0.4 off on its feathered edge
    weights = np.array([[[1.0, 0.5, 0.0]]])
    figures = pasted_figures(renders, truths, weights)
    assert figures["psnr"] == pytest.approx(-10 * np.log10((0.2**2 + 0.4**2) / 3))
    assert figures["pasted_psnr"] == pytest.approx(-10 * np.log10((0.2**2 + 0.5 * 0.4**2) / 1.5))
    assert figures["seam_psnr"] == pytest.approx(-10 * np.log10(0.4**2))  # 4 a (1 - a): only the half-alpha pixel


def test_a_torso_stage_is_also_scored_on_training_frames_with_their_own_codes(tmp_path: Path, subject34) -> None:
    import lightning as L
    import torch
    from hydra.utils import instantiate

    from ernerf.apps.evaluation import evaluate_from_config

    runs = tmp_path / "runs"
    system = instantiate(compose("train", ["subject=mini", "debug=fast", "stage=torso"]).model, num_frames=30)
    ckpt = touch_checkpoint(runs, "mini", "torso")
    torch.save({"state_dict": system.state_dict(), "hyper_parameters": dict(system.hparams), "global_step": 7,
                "stage": {"name": "torso", "background": "plate", "previous": ["head"]},
                "pytorch-lightning_version": L.__version__}, ckpt)
    args = ["subject=mini", f"paths.data_root={subject34.root.parent}", f"paths.runs_root={runs}", "stage_name=torso",
            "downscale=16", "device=cpu", "own_code_every=10"]
    metrics = evaluate_from_config(compose("evaluate", args)).report["metrics"]
    own = [metrics[k] for k in ("torso_own_psnr", "torso_own_pasted_psnr", "torso_own_seam_psnr")]
    assert all(isinstance(v, float) and 0 < v < 100 for v in own) and len(set(own)) == 3
    skipped = evaluate_from_config(compose("evaluate", [*args[:-1], "own_code_every=null", f"output={tmp_path / 'o'}"]))
    assert skipped.report["metrics"]["torso_own_psnr"] == "unavailable"
    assert skipped.report["unavailable"]["torso_own_psnr"] == "own_code_every=null"


def test_a_head_stage_says_why_it_has_no_own_code_figures() -> None:
    from ernerf.apps.evaluation.pasted import own_code_findings

    found = own_code_findings(object(), None, "torso", 10)  # a renderer without a torso field
    assert set(found.unavailable) == {"torso_own_psnr", "torso_own_pasted_psnr", "torso_own_seam_psnr"}
    assert "not a torso-stage checkpoint" in found.unavailable["torso_own_psnr"] and not found.values
