"""bench/pipeline_ceiling.py: infer.py's loop with a renderer that costs nothing, for each cache size."""

from __future__ import annotations

from tests.bench.scripts import run_bench
from tests.postprocess.conftest import mini_subject  # noqa: F401 - session fixture


def test_the_ceiling_is_timed_for_each_cache_size(mini_subject) -> None:
    printed = run_bench("pipeline_ceiling.py", ["--subject", str(mini_subject.root), "--seconds", "1.2",
                                                "--cache-frames", "0,64", "--rounds", "1", "--workers", "2"])
    rows = {int(line.split()[0]): [float(v) for v in line.split()[1:]] for line in printed.splitlines()[2:]}
    assert set(rows) == {0, 64} and all(fps > 0 and cpu > 0 for fps, cpu in rows.values())
    assert "30 frames" in printed and "costs nothing" in printed
