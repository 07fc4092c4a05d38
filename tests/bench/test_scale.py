"""bench/scale.py: the README's preprocessing of a ping-pong clip, measured; the GPU parts on a machine without one."""

from __future__ import annotations

import json
from types import SimpleNamespace

from tests.bench.scripts import REPO, run_bench


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
