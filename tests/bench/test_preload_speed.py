"""bench/preload_speed.py: loading a tiled subject's frames into host or device memory."""

from __future__ import annotations

import json
import sys

from tests.bench.scripts import bench_module, run_bench


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
