"""The ER-NeRF side-by-side's dataset adaptation (a synthetic subject in this project's layout), its schedule, the
commands it runs, and the tables it prints from both codes' logs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench.ernerf_sbs import dataset, report, runs
from bench.ernerf_sbs.report import Point
from ernerf.errors import ErnerfError
from ernerf.io.layout import SubjectLayout
from tests.conftest import compose


def write_subject(root: Path, train: int = 4, val: int = 2, dim: int = 80) -> SubjectLayout:
    """A subject folder with every file ER-NeRF's head stage reads (contents: shapes only)."""
    layout = SubjectLayout(root / "anna")
    for sub in ("gt_imgs", "torso_imgs", "ori_imgs", "parsing"):
        (layout.root / sub).mkdir(parents=True)
    frames = train + val
    for i in range(frames):
        layout.gt(i).write_bytes(b"jpg")
        layout.torso(i).write_bytes(b"png")
        np.savetxt(layout.lms(i), np.zeros((68, 2)))
    for split, ids in (("train", range(train)), ("val", range(train, frames))):
        layout.transforms(split).write_text(json.dumps({"focal_len": 1200.0, "cx": 256.0, "cy": 256.0, "h": 512,
                                                        "w": 512, "frames": [{"img_id": i, "aud_id": i,
                                                                              "transform_matrix": np.eye(4).tolist()}
                                                                             for i in ids]}))
    layout.background.write_bytes(b"jpg")
    layout.au.write_text("frame, timestamp, confidence, success, AU45_r\n"
                         + "".join(f"{i + 1}, {i * 0.04:.3f}, 0.98, 1, 0.50\n" for i in range(frames)))
    np.save(layout.audio_features("mel"), np.zeros((frames, 16, dim), np.float32))
    return layout


def listing(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_adapt_links_what_ernerf_reads_and_the_features_as_aud_npy(tmp_path: Path) -> None:
    layout = write_subject(tmp_path / "data")
    before = listing(layout.root)
    folder, subject = dataset.adapt(layout, dataset.audio_features("mel"), tmp_path / "out")
    assert folder == tmp_path / "out" / "anna"
    assert (subject.num_train, subject.num_val, subject.feature_dim, subject.num_val_scored) == (4, 2, 80, 2)
    assert (folder / "aud.npy").resolve() == layout.audio_features("mel").resolve()
    for name in dataset.READS:
        assert (folder / name).is_symlink() and (folder / name).resolve() == (layout.root / name).resolve()
    assert np.load(folder / "aud.npy").shape == (6, 16, 80)
    assert json.loads((folder / dataset.MARKER).read_text())["asr_model"] == "80"
    assert listing(layout.root) == before  # the user's dataset is not written to
    dataset.adapt(layout, dataset.audio_features("mel"), tmp_path / "out")  # made again in place
    assert (folder / "aud.npy").resolve() == layout.audio_features("mel").resolve()


@pytest.mark.parametrize("breakage, message", [
    (lambda l: l.au.unlink(), r"au.csv is missing: python preprocess.py subject=anna preprocess.force=\[blink\]"),
    (lambda l: l.au.write_text("frame, AU45_r\n1, 0.5\n"), r"no ' AU45_r' column or fewer than 6 rows"),
    (lambda l: l.torso(5).unlink(), r"torso_imgs/5.png is missing: .*preprocess.force=\[composite\]"),
    (lambda l: l.lms(0).unlink(), r"ori_imgs/0.lms is missing: .*preprocess.force=\[landmarks\]"),
    (lambda l: np.save(l.audio_features("mel"), np.zeros((6, 16, 29), np.float32)), r"is \[6, 16, 29\], not"),
    (lambda l: l.audio_features("mel").unlink(), r"aud_mel.npy is missing: python preprocess.py subject=anna "
                                                  r"audio_features=mel"),
    (lambda l: l.transforms("val").write_text(json.dumps({"frames": []})), r"transforms_val.json lacks"),
])
def test_a_subject_ernerf_cannot_read_is_refused_naming_the_step(tmp_path: Path, breakage, message: str) -> None:
    layout = write_subject(tmp_path / "data")
    breakage(layout)
    with pytest.raises(ErnerfError, match=message):
        dataset.adapt(layout, dataset.audio_features("mel"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_adapt_never_clears_a_folder_it_did_not_make(tmp_path: Path) -> None:
    layout = write_subject(tmp_path / "data")
    (tmp_path / "out" / "anna").mkdir(parents=True)
    with pytest.raises(ErnerfError, match="not made by the side-by-side"):
        dataset.adapt(layout, dataset.audio_features("mel"), tmp_path / "out")


def test_unknown_feature_kind_lists_the_known_ones() -> None:
    with pytest.raises(ErnerfError, match="one of .*hubert.*mel"):
        dataset.audio_features("nope")
    assert dataset.audio_features("hubert")["file"] == "aud_hu.npy"


@pytest.mark.parametrize("steps, evals, frames, expected", [
    (10000, 5, 227, (9, 5, 10215)),   # 44 epochs asked -> 5 evaluations 9 epochs apart
    (10000, 5, 6818, (1, 1, 6818)),   # a long subject: one epoch, one evaluation
    (100, 5, 227, (1, 1, 227)),       # less than an epoch: one
    (2000, 4, 500, (1, 4, 2000)),
])
def test_schedule_is_whole_epochs_with_evaluations_at_the_same_steps(steps, evals, frames, expected) -> None:
    schedule = runs.make_schedule(steps, evals, frames)
    assert (schedule.eval_epochs, schedule.evals, schedule.steps) == expected
    assert schedule.steps == schedule.evals * schedule.eval_steps
    # ER-NeRF (main.py, patched): eval_interval = int(eval_steps / frames) epochs, max_epochs = ceil(iters / frames)
    assert int(schedule.eval_steps / frames) == schedule.eval_epochs
    assert -(-schedule.steps // frames) == schedule.evals * schedule.eval_epochs


def test_commands_train_the_same_steps_and_ours_composes(tmp_path: Path) -> None:
    subject = dataset.Subject("anna", 227, 23, "aud_mel.npy", 80)
    schedule = runs.make_schedule(10000, 5, 227)
    theirs = runs.ernerf_command(Path("/er"), Path("/d/anna"), Path("/ws"), schedule, subject, "py", ["--seed=1"])
    assert theirs[:3] == ["py", "/er/main.py", "/d/anna"]
    assert theirs[theirs.index("--iters") + 1] == "10215" and theirs[theirs.index("--asr_model") + 1] == "80"
    assert "-O" in theirs and theirs[theirs.index("--preload") + 1] == "2" and theirs[-1] == "--seed=1"
    assert "--ind_num" not in theirs  # its default, 10,000 per-frame codes, holds 227 frames
    long = dataset.Subject("bob", 12000, 1200, "aud_mel.npy", 80)
    theirs = runs.ernerf_command(Path("/er"), Path("/d/bob"), Path("/ws"), schedule, long, "py", [])
    assert theirs[theirs.index("--ind_num") + 1] == "12001"
    ours = runs.ours_command(subject, tmp_path / "data", tmp_path / "runs", "mel", schedule, tmp_path / "clock.csv",
                             ["seed=3"])
    cfg = compose("train", ours[2:])
    assert cfg.trainer.max_steps == 10215 and cfg.trainer.limit_val_batches == 0 and cfg.seed == 3
    assert cfg.callbacks.checkpoint.every_n_train_steps == 2043 and cfg.callbacks.checkpoint.save_top_k == -1
    assert cfg.callbacks.checkpoint.monitor is None
    assert cfg.callbacks.train_clock.every_n_steps == 2043 and cfg.datamodule.preload is True


def test_lpips_home_holds_the_weights_under_torchvisions_name(tmp_path: Path) -> None:
    weights = tmp_path / "my_alexnet.pth"
    weights.write_bytes(b"w")
    home = runs.lpips_home(weights, tmp_path / "out")
    assert (home / "hub" / "checkpoints" / runs.ALEXNET).read_bytes() == b"w"
    assert runs.lpips_home(None, tmp_path) is None
    with pytest.raises(ErnerfError, match="no file"):
        runs.lpips_home(tmp_path / "missing.pth", tmp_path)


ERNERF_LOG = [  # (seconds since launch, line) as ER-NeRF prints them: 2 epochs of 100 steps, evaluated after each
    (5.0, "[INFO] load 100 train frames."), (9.0, "==> Start Training Epoch 1, lr=0.010000 ..."),
    (19.0, "==> Finished Epoch 1."), (19.5, "++> Evaluate at epoch 1 ..."), (21.0, "\x1b[34mPSNR = 30.500000\x1b[0m"),
    (21.0, "LPIPS (alex) = 0.100000"), (21.1, "++> Evaluate epoch 1 Finished."),
    (22.0, "==> Start Training Epoch 2, lr=0.007071 ..."), (30.0, "==> Finished Epoch 2."),
    (31.0, "++> Evaluate at epoch 2 ..."), (33.0, "PSNR = 31.250000"), (34.0, "[INFO] load 10 test frames."),
    (35.0, "++> Evaluate at epoch 2 ..."), (36.0, "PSNR = 31.000000"),
]


def test_parse_ernerf_times_its_epochs_only() -> None:
    points = report.parse_ernerf(ERNERF_LOG, steps_per_epoch=100)
    assert [(p.step, p.train_s, p.psnr, p.lpips, p.split) for p in points] == [
        (100, 10.0, 30.5, 0.1, "val"), (200, 18.0, 31.25, None, "val"), (200, 18.0, 31.0, None, "test")]


def test_read_timestamped_round_trips_the_log_format(tmp_path: Path) -> None:
    log = tmp_path / "ernerf.log"
    log.write_text("".join(f"{t:.3f}\t{line}\n" for t, line in ERNERF_LOG))
    assert report.parse_ernerf(report.read_timestamped(log), 100)[0].psnr == 30.5


def test_parse_ours_joins_the_clock_with_evaluate_py_metrics(tmp_path: Path) -> None:
    clock = tmp_path / "clock.csv"
    clock.write_text("step,train_s\n100,4.000\n200,7.500\n")
    metrics = {100: {"metrics": {"psnr": 31.0, "lpips": "unavailable"}}, 200: {"metrics": {"psnr": 32.0, "lpips": 0.05}}}
    assert report.parse_ours(clock, metrics) == [Point(100, 4.0, 31.0, None), Point(200, 7.5, 32.0, 0.05)]


def test_tables_at_equal_steps_and_equal_wall_time() -> None:
    ours = [Point(100, 4.0, 31.0), Point(200, 7.5, 32.0), Point(300, 11.0, 32.5)]
    theirs = [Point(100, 10.0, 30.5, 0.1), Point(200, 18.0, 31.25), Point(300, 27.0, 31.75),
              Point(300, 27.0, 31.5, split="test")]
    steps = report.equal_steps_table(ours, theirs).splitlines()
    assert steps[2] == "| 100 | 4.0 | 31.00 | - | 10.0 | 30.50 | 0.1000 |"
    assert steps[4] == "| 300 | 11.0 | 32.50 | - | 27.0 | 31.75 | - |"  # the val figure, not the final test one
    times = report.equal_time_table(ours, theirs, budgets=(20.0, 60.0)).splitlines()
    assert times[2] == "| 4.0 | 100 (at 4.0 s) | 31.00 | - | - |"  # ER-NeRF not yet scored at 4 s
    assert times[4] == "| 11.0 | 300 (at 11.0 s) | 32.50 | 100 (at 10.0 s) | 30.50 |"
    assert times[5] == "| 20.0 | 300 (at 11.0 s) | 32.50 | 200 (at 18.0 s) | 31.25 |"  # a budget within ER-NeRF's run
    assert times[6:] == ["| 27.0 | 300 (at 11.0 s) | 32.50 | 300 (at 27.0 s) | 31.75 |"]  # its whole run; 60 s: past
    slower_ours = [Point(p.step, p.train_s * 10, p.psnr) for p in ours]  # 40, 75, 110 s: ER-NeRF finishes first
    rows = report.equal_time_table(slower_ours, theirs, budgets=()).splitlines()[2:]
    assert [row.split(" | ")[0] for row in rows] == ["| 10.0", "| 18.0", "| 27.0", "| 110.0"]
    assert rows[2] == "| 27.0 | - | - | 300 (at 27.0 s) | 31.75 |"  # at ER-NeRF's evaluations, then our whole run
    assert rows[3] == "| 110.0 | 300 (at 110.0 s) | 32.50 | 300 (at 27.0 s) | 31.75 |"


def figures(psnr: float, lmd: float | str, step: int, **extra) -> dict:
    """An evaluate.py metrics.json: the figures of the final table."""
    regions = {f"region_psnr_{r}": psnr + k for k, r in enumerate(report.REGIONS)}
    return {"step": step, "checkpoint": f"/gpu/out/ours_runs/anna/head/checkpoints/step{step:07d}.ckpt",
            "metrics": {"psnr": psnr, "psnr_face": psnr - 3, "lpips": "unavailable", "lmd": lmd, **regions, **extra},
            "unavailable": {"lpips": "no weights", **({"lmd": "no mediapipe"} if lmd == "unavailable" else {})}}


def test_final_table_shows_lpips_only_where_a_code_has_it_and_ours_lmd_from_a_cpu_evaluation(tmp_path: Path) -> None:
    table = report.final_table([("ours", figures(37.0, 2.5, 200)), ("ER-NeRF", figures(35.5, "unavailable", 0))])
    assert table.splitlines()[0] == "| code | PSNR | face box | LMD px | face | hair | neck | torso | background |"
    assert table.splitlines()[2:] == ["| ours | 37.00 | 34.00 | 2.50 | 37.00 | 38.00 | 39.00 | 40.00 | 41.00 |",
                                      "| ER-NeRF | 35.50 | 32.50 | - | 35.50 | 36.50 | 37.50 | 38.50 | 39.50 |"]
    with_lpips = report.final_table([("ours", figures(37.0, 2.5, 200, lpips=0.02))]).splitlines()
    assert "| LPIPS |" in with_lpips[0] and "| 0.0200 |" in with_lpips[2]
    gpu = {100: figures(36.0, "unavailable", 100), 200: figures(37.0, "unavailable", 200)}
    assert report.ours_at_end(tmp_path, gpu) == ("ours, step 200", gpu[200])  # no CPU evaluation: LMD stays "-"
    (tmp_path / report.OURS_CPU).mkdir()
    (tmp_path / report.OURS_CPU / "metrics.json").write_text(json.dumps(figures(37.01, 2.4, 200)))
    name, ours = report.ours_at_end(tmp_path, gpu)
    assert name == "ours, step 200 (ours_eval_cpu)" and ours["metrics"]["lmd"] == 2.4
    assert report.ours_at_end(tmp_path, {200: figures(37.0, 2.6, 200)})[1]["metrics"]["lmd"] == 2.6  # ours has it


def side_by_side(out: Path) -> None:
    """A finished side-by-side's folder as `report` reads it: 2 evaluations 100 steps apart, ours scored on a machine
    without mediapipe, and ER-NeRF's last validation renders brought back."""
    subject = dataset.Subject("anna", 100, 2, "aud_mel.npy", 80)
    plan = {"subject": subject.__dict__, "schedule": runs.Schedule(100, 1, 2).__dict__, "steps": 200,
            "eval_steps": 100, "data_root": "/gpu/data", "lpips_weights": None, "ernerf": {"status": 0}}
    out.mkdir()
    (out / "plan.json").write_text(json.dumps(plan))
    (out / "ernerf.log").write_text("".join(f"{t:.3f}\t{line}\n" for t, line in ERNERF_LOG))
    (out / "ours_train_clock.csv").write_text("step,train_s\n100,4.000\n200,7.500\n")
    for step, psnr in ((100, 36.0), (200, 37.0)):
        (out / "ours_eval" / f"step{step}").mkdir(parents=True)
        (out / "ours_eval" / f"step{step}" / "metrics.json").write_text(json.dumps(figures(psnr, "unavailable", step)))
    (out / runs.ERNERF_VAL).mkdir()
    for k in (1, 2):
        (out / runs.ERNERF_VAL / f"anna_ep0002_{k:04d}_rgb.png").write_bytes(b"")


def test_report_scores_ernerfs_renders_once_and_tables_both_codes_at_the_final_step(tmp_path: Path, monkeypatch,
                                                                                     capsys) -> None:
    from bench import ernerf_side_by_side as script

    out = tmp_path / "sbs"
    side_by_side(out)
    ran = []

    def evaluate(cmd: list[str], log: Path, what: str) -> float:  # evaluate.py renders=, its metrics.json
        ran.append(cmd)
        folder = Path(next(a for a in cmd if a.startswith("output="))[7:])
        (folder / "metrics.json").write_text(json.dumps(figures(35.5, 3.1, 0)))
        return 1.0

    monkeypatch.setattr(runs, "run_logged", evaluate)
    monkeypatch.setattr(runs, "lmd_available", lambda: False)  # as on the GPU machine
    monkeypatch.setattr("sys.argv", ["ernerf_side_by_side.py", "report", "--out", str(out), "--data-root",
                                     str(tmp_path / "data")])
    script.main()
    printed = capsys.readouterr().out
    assert len(ran) == 1 and ran[0][1].endswith("evaluate.py")
    compose("evaluate", ran[0][2:])  # a command evaluate.py takes
    assert {f"renders={out / 'ernerf_val'}", f"output={out / 'ernerf_eval'}", "max_frames=2", "subject=anna",
            f"paths.data_root={tmp_path / 'data'}"} <= set(ran[0])
    assert "| ours, step 200 | 37.00 | 34.00 | - | 37.00 |" in printed  # no mediapipe where ours was scored
    assert "| ER-NeRF, step 200 (its renders) | 35.50 | 32.50 | 3.10 | 35.50 |" in printed  # epoch 2 of 100 steps
    hint = next(line for line in printed.splitlines() if line.startswith("our LMD is unavailable"))
    assert "(no mediapipe)" in hint and f"output={out / 'ours_eval_cpu'}" in hint
    assert f"run={out / 'ours_runs/anna/head/checkpoints/step0000200.ckpt'}" in hint
    (out / "ours_eval_cpu").mkdir()
    (out / "ours_eval_cpu" / "metrics.json").write_text(json.dumps(figures(37.0, 2.9, 200)))
    script.print_report(out, tmp_path / "data")
    printed = capsys.readouterr().out
    assert len(ran) == 1  # scored once
    assert "| ours, step 200 (ours_eval_cpu) | 37.00 | 34.00 | 2.90 |" in printed and "our LMD" not in printed


def test_a_subject_preprocessed_here_is_readable_by_ernerf(prepare_subject, tmp_path: Path) -> None:
    """The real pipeline's output passes every check (the clip is preprocessed once per session, shared with
    tests/test_bench.py)."""
    layout = SubjectLayout(prepare_subject("train/trump_10s.mp4"))
    folder, subject = dataset.adapt(layout, dataset.audio_features("mel"), tmp_path)
    frames = json.loads(layout.transforms("train").read_text())["frames"]
    assert subject.num_train == len(frames) and subject.num_val >= 1 and subject.feature_dim == 80
    assert np.load(folder / "aud.npy", mmap_mode="r").shape[1:] == (16, 80)
    assert (folder / "au.csv").read_text().splitlines()[0].split(",")[-1] == " AU45_r"


def test_the_colour_renders_of_ernerfs_last_evaluation_are_kept_for_the_report(tmp_path: Path) -> None:
    from bench.ernerf_sbs import runs

    validation = tmp_path / "ws" / "validation"
    validation.mkdir(parents=True)
    for epoch in (9, 45):  # two evaluations, each with colour and depth images
        for i in (1, 2):
            for kind in ("rgb", "depth"):
                (validation / f"ngp_ep{epoch:04d}_{i:04d}_{kind}.png").write_bytes(b"%d" % epoch)
    assert runs.keep_last_renders(tmp_path / "ws", tmp_path / "out") == 2
    kept = tmp_path / "out" / runs.ERNERF_VAL
    assert sorted(p.name for p in kept.iterdir()) == ["ngp_ep0045_0001_rgb.png", "ngp_ep0045_0002_rgb.png"]
    assert runs.keep_last_renders(tmp_path / "nothing", tmp_path / "out2") == 0


def test_comparison_sheet_shows_the_same_head_crop_of_each_image_enlarged_without_smoothing(tmp_path: Path) -> None:
    import cv2

    assert report.head_crop((0, 20, 50, 64), 64, 64) == (slice(0, 36), slice(28, 64))  # kept inside the frame
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    images = [truth, 255 - truth, truth // 2]
    path = report.comparison_sheet(tmp_path / "c.png", [(7, images), (9, images)], ["gt", "a", "b"],
                                   {7: (20, 40, 20, 40), 9: (10, 30, 30, 50)})
    sheet = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    side = report.CROP_PX
    assert sheet.shape == (28 + 2 * side, 3 * side, 3)
    ys, xs = report.head_crop((10, 30, 30, 50), 64, 64)
    scale = side / (ys.stop - ys.start)
    for c, image in enumerate(images):  # the second row's crop, pixel for pixel (nearest: no new colours)
        crop = sheet[28 + side: 28 + 2 * side, c * side: (c + 1) * side]
        for y, x in ((0, 0), (side - 1, side - 1), (side // 2, side // 3)):
            assert (crop[y, x] == image[ys.start + int(y / scale), xs.start + int(x / scale)]).all()


def test_where_lmd_can_be_scored_report_scores_our_kept_renders_as_ernerfs(tmp_path: Path, monkeypatch,
                                                                          capsys) -> None:
    """Ours scored without LMD on the GPU machine, its last renders kept: `report` where mediapipe is scores those
    files as it scores ER-NeRF's (once), and the final table names our last step."""
    from bench import ernerf_side_by_side as script

    out = tmp_path / "sbs"
    side_by_side(out)
    kept = out / "ours_eval" / "step200" / "renders"
    kept.mkdir()
    ran = []

    def evaluate(cmd: list[str], log: Path, what: str) -> float:
        ran.append(cmd)
        folder = Path(next(a for a in cmd if a.startswith("output="))[7:])
        ours = "renders=" + str(kept) in cmd
        metrics = figures(37.02, 2.7, 200) if ours else figures(35.5, 3.1, 0)
        (folder / "metrics.json").write_text(json.dumps({**metrics, "renders": str(kept) if ours else None}))
        return 1.0

    monkeypatch.setattr(runs, "run_logged", evaluate)
    monkeypatch.setattr(runs, "lmd_available", lambda: True)
    monkeypatch.setattr(script, "write_comparison", lambda *args: out / "compare.png")
    for _ in range(2):
        script.print_report(out, tmp_path / "data")
        printed = capsys.readouterr().out
        assert "| ours, step 200 (ours_eval_cpu) | 37.02 | 34.02 | 2.70 |" in printed and "our LMD" not in printed
        assert "| ER-NeRF, step 200 (its renders) | 35.50 | 32.50 | 3.10 |" in printed
    assert len(ran) == 2 and {f"renders={kept}", f"output={out / 'ours_eval_cpu'}", "max_frames=2"} <= set(ran[1])
