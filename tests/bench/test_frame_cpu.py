"""bench/frame_cpu.py: the CPU work around each rendered frame, per part, against a baseline revision."""

from __future__ import annotations

from tests.bench.scripts import run_bench


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
