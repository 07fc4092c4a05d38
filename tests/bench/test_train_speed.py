"""bench/train_speed.py: the step rate and the PSNR after a training budget, or after the stage's own steps."""

from __future__ import annotations

import json
import sys

from tests.bench.scripts import TINY, TINY_FIELD, bench_module, first_training_frames, run_bench


def test_train_speed_reports_rate_and_budget_psnr(prepare_subject, tmp_path) -> None:
    root = first_training_frames(prepare_subject("train/trump_10s.mp4"), tmp_path / "data")
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
    root = first_training_frames(prepare_subject("train/trump_10s.mp4"), tmp_path / "data")
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
    weights_psnr = figures["curve"][-1]["val_psnr_weights"]
    assert 5 < weights_psnr < 60 and weights_psnr != figures["val_psnr"]


def test_a_lips_or_torso_stage_is_timed_from_the_trained_stage_before_it(tmp_path, capsys) -> None:
    """As train.py: init_from=, else the subject's previous stage; per-frame codes of another length (a tiled
    subject timed from its short original's head) are left out; none at all is said, as its rates are not a
    stage's."""
    import torch

    from tests.conftest import compose

    bench = bench_module("train_speed")
    saved = tmp_path / "head.ckpt"
    torch.save({"state_dict": {"field.individual_codes": torch.zeros(227, 0), "field.sigma.weight": torch.ones(2)}},
               saved)
    lips = compose("train", ["subject=someone", "stage=lips", f"init_from={saved}"])
    assert bench.starting_checkpoint(lips, 227) == str(saved)
    fitted = bench.starting_checkpoint(lips, 7500)
    assert fitted != str(saved) and list(torch.load(fitted, weights_only=False)["state_dict"]) == ["field.sigma.weight"]
    assert "field.individual_codes left at their init: 7500 frames here" in capsys.readouterr().out
    alone = compose("train", ["subject=someone", "stage=lips", f"paths.runs_root={tmp_path / 'runs'}"])
    assert bench.starting_checkpoint(alone, 227) is None
    assert "Timing lips from an untrained head" in capsys.readouterr().out
    assert bench.starting_checkpoint(compose("train", ["subject=someone", "stage=head"]), 227) is None


def test_a_tiled_torso_is_timed_as_its_stage_would_run_it(prepare_subject, tmp_path, monkeypatch, capsys) -> None:
    """--tile-to: the subject's training frames listed up to that many, the runs found under the subject's own name;
    the torso's head layers follow the stage's real budget for that many frames (rendered: its 10,000-step minimum
    of 256 rays outnumbers the 16 frames' 64 x 64 pixels), not the bench's 3 steps (which would march the head)."""
    root = first_training_frames(prepare_subject("train/trump_10s.mp4"), tmp_path / "data", count=8)
    out = tmp_path / "tiled.json"
    monkeypatch.setattr(sys, "argv", ["train_speed.py", "--data-root", str(root.parent), "--subject", root.name,
                                      "--tile-to", "16", "--stage", "torso", "--steps", "3", "--warmup", "1",
                                      "--budget", "0", "--override", "trainer=cpu", "--override",
                                      "datamodule.num_workers=0", "--override", f"paths.runs_root={tmp_path / 'runs'}",
                                      "--override", "+callbacks.head_layers.progress=false", "--json", str(out),
                                      *TINY, *TINY_FIELD])
    bench_module("train_speed").main()
    printed = capsys.readouterr().out
    figures = json.loads(out.read_text())
    assert figures["train_frames"] == 16 and figures["stage_steps"] == 10000  # the torso's minimum (30 x 16 < 10k)
    assert figures["stage_steps_s"] == round(10000 / figures["it_per_s"], 1)
    assert "the stage's 10000 steps on 16 frames render the frozen head" in printed
    assert "Timing torso from an untrained head" in printed  # no trained stage under this subject's runs
    assert "its budget for 16 training frames, 10000 steps" in printed
