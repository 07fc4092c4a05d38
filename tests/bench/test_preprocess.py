"""bench/preprocess.py: its table of CPU per step, of the whole process tree and of the main process."""

from __future__ import annotations

import pytest

from tests.bench.scripts import REPO


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
