"""The benchmarks (speed, voices) run end to end on CPU (tiny sizes) and report the figures they promise."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = ["--rays", "256", "--override", "datamodule.downscale=8", "--override", "model.grid.resolution=16"]
# A small field and few samples, for the benches that train and then render every validation frame.
SMALL_FIELD = ["encoder.num_levels=4", "encoder.log2_hashmap_size=10", "encoder.desired_resolution=64",
               "model.marcher.num_samples=8"]
TINY_FIELD = [f"--override={o}" for o in SMALL_FIELD]


def bench_module(name: str):
    """bench/<name>.py imported as a module (the scripts are not a package)."""
    sys.path.insert(0, str(REPO / "bench"))
    return importlib.import_module(name)


def run_bench(script: str, args: list[str]) -> str:
    proc = subprocess.run([sys.executable, str(REPO / "bench" / script), *args], capture_output=True, text=True,
                          cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_profile_step_reports_phases_and_variants(prepare_subject, tmp_path) -> None:
    root = prepare_subject("train/trump_10s.mp4")
    out = tmp_path / "profile.json"
    run_bench("profile_step.py", ["--data-root", str(root.parent), "--subject", root.name, "--steps", "3",
                                  "--warmup", "1", "--profile-steps", "2", "--variant", "base",
                                  "--variant", "fused,model.marcher.num_samples=8", "--json", str(out), *TINY])
    figures = json.loads(out.read_text())
    for variant in ("base", "fused,model.marcher.num_samples=8"):
        assert figures[variant]["it_per_s"] > 0
        assert 0 < figures[variant]["samples_per_ray"] <= 16
        assert {"data", "forward", "backward", "optimizer"} <= set(figures[variant]["host_ms_per_phase"])
    assert figures["fused,model.marcher.num_samples=8"]["samples_per_ray"] <= 8  # the override reached the model


def test_train_speed_reports_rate_and_budget_psnr(prepare_subject, tmp_path) -> None:
    root = prepare_subject("train/trump_10s.mp4")
    out = tmp_path / "speed.json"
    run_bench("train_speed.py", ["--data-root", str(root.parent), "--subject", root.name, "--steps", "4",
                                 "--warmup", "1", "--budget", "8", "--val-every", "1", "--override", "trainer=cpu",
                                 "--override", "datamodule.num_workers=0", "--override", "datamodule.num_val_frames=2",
                                 "--override", "datamodule.preload=host", "--json", str(out), *TINY, *TINY_FIELD])
    figures = json.loads(out.read_text())
    assert figures["it_per_s"] > 0 and figures["rays_per_s"] == figures["it_per_s"] * 256
    assert figures["preload"] == "host"  # frames staged from host memory each step (on a CPU too)
    assert figures["val_frames"] == 2  # the explicit override wins over the bench's default (every held-out frame)
    assert figures["cuda_graph_captures"] == 0  # a CPU run is eager
    assert 5 < figures["val_psnr"] < 60 and 0 < figures["val_ssim"] <= 1
    curve = figures["curve"]  # scored every 1 s of training (the clock stopped while scoring), last at the budget
    assert len(curve) >= 2 and curve[-1]["val_psnr"] == figures["val_psnr"]
    assert curve[-1]["train_s"] >= 8 and all(p["train_s"] < 8 for p in curve[:-1])
    assert all(a["steps"] < b["steps"] and a["train_s"] < b["train_s"] for a, b in zip(curve, curve[1:]))


def test_train_speed_full_stage_trains_the_stage_budget_and_scores_its_end(prepare_subject, tmp_path, monkeypatch,
                                                                           capsys) -> None:
    """--full-stage: train.py's step budget for the subject (here capped by stage.max_steps), scored at the end, with
    an EMA of the weights scored next to the weights themselves."""
    root = prepare_subject("train/trump_10s.mp4")
    out = tmp_path / "stage.json"
    # in this process: the test above starts the script as a user does, a second start would only repeat its imports
    monkeypatch.setattr(sys, "argv", ["train_speed.py", "--data-root", str(root.parent), "--subject", root.name,
                                      "--steps", "0", "--full-stage", "--override", "stage.max_steps=7", "--override",
                                      "trainer=cpu", "--override", "datamodule.num_workers=0", "--override",
                                      "datamodule.num_val_frames=2", "--target-psnr", "5", "--override",
                                      "callbacks.ema={_target_: callbacks.ema.EMAWeights, every_n_steps: 2}",
                                      "--json", str(out), *TINY, *TINY_FIELD])
    bench_module("train_speed").main()
    printed = capsys.readouterr().out
    figures = json.loads(out.read_text())
    assert figures["steps"] == 7 and [p["steps"] for p in figures["curve"]] == [7]  # one score, at the stage's end
    assert 5 < figures["val_psnr"] < 60 and figures["target_reached_s"] == figures["train_s"]
    assert 0 < figures["startup_s"] <= figures["train_s"]  # the clock at the first check (step 1 on a CPU)
    assert "7 steps per device" in printed
    assert 5 < figures["curve"][-1]["val_psnr_weights"] < 60 and figures["curve"][-1]["val_psnr_weights"] != figures["val_psnr"]


def test_preload_speed_times_a_tiled_subject_in_each_mode(tmp_path, monkeypatch, capsys) -> None:
    from tests.synthetic import write_synthetic_subject

    root = write_synthetic_subject(tmp_path / "sphere", num_frames=12, size=16)
    for preload, stage, kinds in (("host", "head", ["image", "background"]), ("device", "torso", ["image", "masks"])):
        args = ["--subject-dir", str(root), "--tile-to", "30", "--preload", preload, "--stage", stage, "--threads", "2"]
        if preload == "host":  # as a user runs it
            printed = run_bench("preload_speed.py", args)
        else:  # the other mode in this process: a second subprocess would only repeat the start-up
            monkeypatch.setattr(sys, "argv", ["preload_speed.py", *args])
            bench_module("preload_speed").main()
            printed = capsys.readouterr().out
        figures = json.loads(printed)
        assert figures["frames"] == 30 + 2 and figures["kinds"] == kinds and figures["seconds"] >= 0  # + 2 val frames
        assert figures["bytes"] == 32 * 16 * 16 * (6 if stage == "head" else 5)  # 3 + 3 colours, or 3 + 2 masks


def test_sync_sources_name_the_ops_around_each_sync() -> None:
    """The walk up from a sync call to the ops and labels that made it (labels stand in for CUDA calls on a CPU)."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    sys.path.insert(0, str(REPO / "bench"))
    from profile_step import sync_sources

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            with record_function("step"), record_function("logging"), record_function("cudaStreamSynchronize"):
                torch.ones(3).sum()
            with record_function("step"), record_function("Memcpy DtoH (Device -> Pageable)"):
                pass
    sources = sync_sources(prof, steps=2)
    assert sources == {"cudaStreamSynchronize < logging < step": 1.0, "Memcpy DtoH (Device -> Pageable) < step": 1.0}


def test_cli_speed_times_every_question_of_every_script(tmp_path) -> None:
    out = tmp_path / "cli.json"
    printed = run_bench("cli_speed.py", ["--runs", "1", "--json", str(out)])
    figures = json.loads(out.read_text())
    assert set(figures["scripts"]) == {"preprocess.py", "train.py", "infer.py", "evaluate.py", "serve.py"}
    for row in figures["scripts"].values():
        assert set(row) == {"--help", "--cfg job", "completion"}
        assert all(seconds > figures["baseline_s"] for seconds in row.values())
    assert "train.py" in printed and "completion" in printed


# ---------------------------------------------------------------- bench/voices.py: the cross-speaker benchmark


def voices_module():
    sys.path.insert(0, str(REPO / "bench"))
    import voices

    return voices


def test_voice_sync_finds_a_known_lag_and_a_still_mouth_scores_no_spread() -> None:
    """The benchmark's figures: the lag-forgiving correlation of evaluate.py, the spread of the mouth."""
    from ernerf.apps.evaluation.figures import SYNC_LAG, audio_sync_findings
    from ernerf.metrics.lipsync import correlation

    voices = voices_module()
    energy = np.abs(np.sin(np.linspace(0, 12, 80))) + 0.1 * np.random.default_rng(0).random(80)
    late = np.concatenate([np.full(2, energy[0]), energy[:-2]])  # the mouth follows the sound 2 frames late
    assert audio_sync_findings(late, energy, "c").values["c"] > 0.99  # SYNC_LAG forgives it
    assert SYNC_LAG == 2 and correlation(late, energy, max_lag=0) < 0.9  # without the allowance: less
    still = np.full(80, 0.07)
    assert voices.mouth_spread(still) == pytest.approx(0.0, abs=1e-12)
    assert audio_sync_findings(still, energy, "c").values["c"] == 0.0
    assert voices.mouth_spread(0.5 * late) == pytest.approx(0.5 * np.std(late))


def test_voice_ratios_are_to_the_subject_own_audio_and_the_target_needs_all_of_them() -> None:
    voices = voices_module()
    scores = voices.add_ratios([voices.SourceScore("own", 23, 0.5, 0.02), voices.SourceScore("a", 125, 0.45, 0.02),
                                voices.SourceScore("b", 125, 0.6, 0.01)])
    assert [s.corr_ratio for s in scores] == [None, pytest.approx(0.9), pytest.approx(1.2)]
    assert [s.spread_ratio for s in scores] == [None, pytest.approx(1.0), pytest.approx(0.5)]
    assert not voices.meets_target(scores)  # b's mouth moves half as much as with the subject's own audio
    scores[2].spread = 0.018
    assert voices.meets_target(voices.add_ratios(scores))
    scores.append(voices.SourceScore("own-train", 125, 0.1, 0.001))  # a reference, not a foreign voice
    assert voices.meets_target(voices.add_ratios(scores)) and scores[-1].corr_ratio == pytest.approx(0.2)
    unmeasured = voices.add_ratios([voices.SourceScore("own", 23, None, 0.02), voices.SourceScore("a", 9, 0.4, 0.02)])
    assert unmeasured[1].corr_ratio is None and not voices.meets_target(unmeasured)


@pytest.fixture(scope="module")
def voiced_mini(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """34 real frames of trump_10s.mp4 with their sound, and a head stage trained on them for a few steps."""
    from ernerf.apps.train import train
    from ernerf.constants import SAMPLE_RATE
    from ernerf.io.audio import load_audio, write_wav
    from tests.conftest import compose, shared_clip
    from tests.postprocess.mini_subject import write_mini_subject

    tmp = tmp_path_factory.mktemp("voices")
    clip = shared_clip("train/trump_10s.mp4")
    layout = write_mini_subject(tmp / "data" / "mini", clip, num_frames=34)
    write_wav(layout.audio, load_audio(clip, sr=SAMPLE_RATE)[: 34 * SAMPLE_RATE // 25], SAMPLE_RATE)
    steps = 6
    train(compose("train", ["subject=mini", f"paths.data_root={tmp / 'data'}", f"paths.runs_root={tmp / 'runs'}",
                            "audio_features=mel", "debug=fast", "datamodule.num_rays=256", "model.grid.resolution=16",
                            *SMALL_FIELD,
                            f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}",
                            f"callbacks.checkpoint.every_n_train_steps={steps}",
                            f"callbacks.val_images.every_n_steps={steps}"]))
    return tmp / "data", tmp / "runs"


def test_voices_quick_drives_the_subject_with_every_kind_of_source(voiced_mini, tmp_path) -> None:
    from tests.conftest import shared_clip

    data, runs = voiced_mini
    out = tmp_path / "voices.json"
    printed = run_bench("voices.py", ["--subject", "mini", "--data-root", str(data), "--runs-root", str(runs),
                                      "--quick", "--downscale", "8", "--audio", str(shared_clip("audio/obama_5s.wav")),
                                      "--other-clip", str(shared_clip("train/hdtf_aoc_8s.mp4")), "--json", str(out)])
    report = json.loads(out.read_text())
    sources = {s["source"]: s for s in report["sources"]}
    assert list(sources) == ["own", "own-train", "obama_5s", "clip:hdtf_aoc_8s", "tts"]
    assert report["audio_kind"] == "mel"
    assert sources["own"]["frames"] == 4 and all(s["frames"] == 5 for s in report["sources"][1:])  # --quick
    own = sources["own"]
    assert own["lmd"] is None or own["lmd"] >= 0  # against the ground truth, own frames only
    assert all(s["lmd"] is None for s in report["sources"][1:])
    for s in report["sources"]:
        assert (s["spread"] is None and s["note"]) or s["spread"] >= 0
        assert f"| {s['source']} |" in printed
    if own["corr"] and own["corr"] > 0 and sources["tts"]["corr"] is not None:
        assert sources["tts"]["corr_ratio"] == pytest.approx(sources["tts"]["corr"] / own["corr"])
    assert (tmp_path / "tts.wav").is_file() and str(out) in printed


def test_scale_quick_preprocesses_a_pingpong_clip_and_reports_consistent_figures(tmp_path) -> None:
    """--quick: the clip's first 1.6 s forward and back through the README's preprocess command; the figures must
    agree with each other (frames, per-step rates, files per folder, bytes) and the GPU parts be absent."""
    out = tmp_path / "scale.json"
    printed = run_bench("scale.py", ["--quick", "--work-dir", str(tmp_path / "work"), "--json", str(out)])
    report = json.loads(out.read_text())
    assert "cost, not quality" in report["note"] and "cost, not quality" in printed
    (only,) = report["lengths"]
    pre = only["preprocess"]
    n = pre["frames"]  # ~3.2 s at 25 fps: a stream copy cuts the clip at a packet, not at exactly 3.2 s
    assert only["seconds"] == 3.2 and abs(only["clip_seconds"] - 3.2) < 0.3 and abs(n - 25 * only["clip_seconds"]) <= 2
    assert pre["returncode"] == 0 and pre["peak_rss_mib"] > 100 and pre["peak_tree_rss_mib"] > 0
    steps = {s["step"]: s for s in pre["steps"]}
    assert {"ingest", "headbox", "parsing", "composite", "matting", "tracking", "report"} <= set(steps)
    for s in steps.values():  # fps = frames / seconds, up to the rounding of both (0.1 frame/s, 0.01 s)
        assert abs(s["fps"] * s["seconds"] - n) <= 0.005 * s["fps"] + 0.05 * s["seconds"] + 0.01
    assert sum(s["seconds"] for s in steps.values()) < pre["wall_seconds"]
    assert abs(pre["fps_overall"] - n / pre["wall_seconds"]) < 0.01
    parts = pre["dataset"]["parts"]
    assert parts["ori_imgs"]["files"] == 2 * n  # <i>.jpg and <i>.lms
    assert parts["gt_imgs"]["files"] == parts["torso_imgs"]["files"] == parts["parsing"]["files"] == n
    assert pre["dataset"]["bytes"] == sum(p["bytes"] for p in parts.values()) > n * 3 * 1000
    assert pre["dataset"]["files"] == sum(p["files"] for p in parts.values())
    assert ".logs" not in parts and "train" not in only and "infer" not in only
    assert not (tmp_path / "work" / "data" / "scale_3.2s").exists()  # removed once measured (no --keep)


def test_scale_gpu_parts_say_skipped_without_cuda(tmp_path, monkeypatch) -> None:
    """--train/--infer on a machine without CUDA record 'skipped: no GPU' instead of failing."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_scale", REPO / "bench" / "scale.py")
    scale = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scale)
    monkeypatch.setattr(scale, "long_clip", lambda unit, seconds, work: unit)
    monkeypatch.setattr(scale, "probe", lambda video: SimpleNamespace(duration=20.0))
    monkeypatch.setattr(scale, "preprocess", lambda video, data_root, subject, overrides: {"frames": 1})
    monkeypatch.setattr(scale, "print_length", lambda result: None)
    args = scale.parse_args(["--train", "--infer", "--work-dir", str(tmp_path)])
    result = scale.measure_length(args, tmp_path / "unit.mp4", 20.0, gpu=False)
    assert result["train"] == result["infer"] == "skipped: no GPU"
    assert [scale.parse_length(x) for x in ("20", "20s", "1m", "2.5m")] == [20.0, 20.0, 60.0, 150.0]


def test_preprocess_bench_sums_all_and_main_process_cpu_per_step() -> None:
    """bench/preprocess.py's table: per step and overall, CPU of the whole tree and of the main process alone."""
    import importlib.util

    from ernerf.preprocess.base import StepReport

    spec = importlib.util.spec_from_file_location("bench_preprocess", REPO / "bench" / "preprocess.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    full = [StepReport("parsing", "ran", 4.0, {"cpu_seconds": 7.5, "main_cpu_seconds": 0.5}),
            StepReport("matting", "ran", 3.0, {"cpu_seconds": 5.0, "main_cpu_seconds": 2.0})]
    warm = [StepReport(r.name, "", 0.0, {}) for r in full]
    rows = {r["step"]: r for r in bench.table(full, 100, warm, 0)}
    assert (rows["matting"]["cpu_seconds"], rows["matting"]["main_cpu_seconds"]) == (5.0, 2.0)
    assert (rows["overall"]["cpu_seconds"], rows["overall"]["main_cpu_seconds"]) == (12.5, 2.5)
    assert rows["overall"]["fps"] == pytest.approx(100 / 7.0, abs=0.01)
    assert 0.0 < bench.main_cpu_seconds() <= bench.cpu_seconds()


def test_frame_cpu_times_each_part_against_a_baseline_with_the_same_bits(prepare_subject) -> None:
    """bench/frame_cpu.py on the real subject, this checkout against itself: every part timed, 512 and 1080p."""
    root = prepare_subject("train/trump_10s.mp4")
    out = run_bench("frame_cpu.py", ["--subject", str(root), "--baseline-rev", "HEAD", "--rounds", "2", "--hd"])
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in out.splitlines() if line.startswith("| ")}
    assert list(rows) == ["part", "background", "alpha", "decode", "paste", "total"]
    assert [h.strip() for h in rows["part"]] == ["512 before", "512 after", "1080p before", "1080p after"]
    assert rows["background"][2].strip().endswith("*") and not rows["decode"][2].strip().endswith("*")
    totals = [float(cell) for cell in rows["total"]]
    assert all(t > 0 for t in totals) and totals[2] > totals[0]  # the 1080p frame costs more to decode and paste
    assert "same bits" in out


def test_compare_subjects_tells_a_dataset_change_from_a_rerun(tmp_path: Path) -> None:
    compare = bench_module("compare_subjects")
    for name, seconds in (("a", 1.5), ("b", 2.5)):
        root = tmp_path / name
        (root / ".steps").mkdir(parents=True)
        (root / ".logs").mkdir()
        (root / ".logs" / f"{name}.log").write_text(name)
        (root / ".steps" / "ingest.json").write_text(json.dumps({"seconds": seconds, "facts": {"frames": 3}}))
        (root / "meta.json").write_text(json.dumps({"subject": name, "root": str(root), "num_frames": 3}))
        (root / "mesh.npy").write_bytes(b"\x01\x02")
    assert compare.differences(tmp_path / "a", tmp_path / "b") == []
    (tmp_path / "b" / "mesh.npy").write_bytes(b"\x01\x03")
    (tmp_path / "b" / ".steps" / "ingest.json").write_text(json.dumps({"seconds": 1.0, "facts": {"frames": 4}}))
    assert compare.differences(tmp_path / "a", tmp_path / "b") == ["differs: .steps/ingest.json", "differs: mesh.npy"]
