"""bench/render_samples.py: renders with each ray's first k occupied samples against the full render, on a subject
trained for a few steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.bench.scripts import run_bench, train_mini_head


@pytest.fixture(scope="module")
def trained_mini(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """24 real frames of trump_10s.mp4 and a head stage trained on them for a few steps."""
    from tests.conftest import shared_clip
    from tests.postprocess.mini_subject import write_mini_subject

    tmp = tmp_path_factory.mktemp("samples")
    write_mini_subject(tmp / "data" / "mini", shared_clip("train/trump_10s.mp4"), num_frames=24)
    train_mini_head(tmp / "data", tmp / "runs", 6)
    return tmp / "data", tmp / "runs"


def test_fewer_samples_a_ray_evaluate_fewer_samples_and_all_of_them_is_the_full_render(trained_mini, tmp_path) -> None:
    data, runs = trained_mini
    out = tmp_path / "samples.json"
    printed = run_bench("render_samples.py", ["--subject", "mini", "--data-root", str(data), "--runs-root", str(runs),
                                              "--downscale", "8", "--frames", "3", "--time-frames", "2",
                                              "--max-samples", "1,2,8", "--json", str(out)])
    report = json.loads(out.read_text())
    arms = report["arms"]
    assert list(arms) == ["all", "1", "2", "8"] and report["stage"] == "head" and len(report["frames"]) == 3
    assert arms["all"]["max_pixel_diff"] == 0 and arms["all"]["samples_vs_full"] == 1.0
    samples = [arms[k]["samples_a_frame"] for k in ("1", "2", "8", "all")]
    assert samples == sorted(samples) and samples[0] < samples[-1]  # a tighter cut evaluates fewer samples
    assert samples[2] == samples[3] and arms["8"]["max_pixel_diff"] == 0  # 8 is every sample of SMALL_FIELD's rays
    assert all(arm["frames_per_s"] > 0 for arm in arms.values())
    assert "PSNR vs full" in printed and "exact" in printed
