"""bench/stage_rates.py: a long subject's stage rates from a short one's frames tiled (on the CPU: the smoke test)."""

from __future__ import annotations

import json

from tests.bench.scripts import TINY_FIELD, bench_module, first_training_frames


def test_each_stage_of_each_length_is_timed_with_its_budget(prepare_subject, tmp_path, capsys) -> None:
    """Two lengths of the 24-frame subject (24 training frames of 47: a 2 s and a 4 s subject tile them to 26 and
    51), head and torso, each a bench/train_speed.py process; the table and the JSON agree."""
    root = first_training_frames(prepare_subject("train/trump_10s.mp4"), tmp_path / "data")
    out = tmp_path / "rates.json"
    bench_module("stage_rates").main(["--subject", root.name, "--data-root", str(root.parent), "--runs-root",
                                      str(tmp_path / "runs"), "--lengths", "2", "4", "--stages", "head", "torso",
                                      "--steps", "3", "--warmup", "1", "--cpu", "--override", "trainer=cpu",
                                      "--override", "datamodule.downscale=8", "--override", "model.grid.resolution=16",
                                      "--json", str(out), "--", "--rays", "256", *TINY_FIELD])
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert "cost, not quality" in report["note"]
    assert [length["train_frames"] for length in report["lengths"]] == [26, 51]
    for length in report["lengths"]:
        rows = {row["stage"]: row for row in length["stages"]}
        assert set(rows) == {"head", "torso"} and all("error" not in row for row in rows.values())
        assert rows["head"]["stage_steps"] == 10000 and rows["torso"]["stage_steps"] == 10000  # the minimums
        for row in rows.values():
            assert row["it_per_s"] > 0 and row["stage_steps_s"] == round(10000 / row["it_per_s"], 1)
            assert row["frames"] == length["train_frames"] and row["bench_wall_s"] > 0
    assert "stage=all" not in printed  # lips not timed: no sum of the three
    assert "26 training frames" in printed and "51 training frames" in printed


def test_without_a_gpu_it_says_so_and_stops(prepare_subject, tmp_path, capsys) -> None:
    root = first_training_frames(prepare_subject("train/trump_10s.mp4"), tmp_path / "data")
    bench_module("stage_rates").main(["--subject", root.name, "--data-root", str(root.parent)])
    assert "skipped: no GPU" in capsys.readouterr().out
