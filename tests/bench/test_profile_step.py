"""bench/profile_step.py: the phases and variants of a training step on the real subject, and where syncs come from."""

from __future__ import annotations

import json
import sys

from tests.bench.scripts import REPO, TINY, first_training_frames, run_bench


def test_profile_step_reports_phases_and_variants(prepare_subject, tmp_path) -> None:
    root = first_training_frames(prepare_subject("train/trump_10s.mp4"), tmp_path / "data")
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
