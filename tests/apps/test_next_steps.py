"""The end of a training run: its figures, its files and the commands that come next."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from ernerf.apps.next_steps import fall_warning, figures_line, finished_summary


def test_figures_lead_with_psnr_and_keep_other_validation_figures() -> None:
    line = figures_line({"val/ssim": 0.91234, "train/loss": 1.0, "val/psnr": 31.4159, "val/extra": 2.0})
    assert line == "val/psnr 31.42 dB, val/ssim 0.9123, val/extra 2"
    assert "did not run" in figures_line({"train/loss": 1.0})


def test_summary_names_the_checkpoint_and_the_commands_that_follow(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "anna" / "head"
    (run / "csv").mkdir(parents=True)
    (run / "csv" / "metrics.csv").write_text("step\n")
    text = finished_summary("anna", "head", run, 3000, {"val/psnr": 30.0}, ["lips", "torso"])
    lines = text.splitlines()
    assert lines[0] == "finished head of anna at step 3000: val/psnr 30 dB"
    assert f"checkpoint  {run / 'checkpoints' / 'last.ckpt'}" in text and "metrics.csv" in text
    assert "images" not in text  # no val_images folder: not named
    after = lines[lines.index("next:") + 1:]
    assert [a.split("#")[0].strip() for a in after] == [
        "python train.py subject=anna stage=lips", "python train.py subject=anna stage=torso",
        "python infer.py subject=anna stage=head audio=<speech.wav>", "python evaluate.py subject=anna stage=head"]


def test_the_last_stage_suggests_no_further_training(tmp_path: Path) -> None:
    text = finished_summary("anna", "torso", tmp_path, 10, {}, [])
    assert "python train.py" not in text and "python infer.py subject=anna stage=torso" in text


BEST = {"path": "/runs/anna/head/checkpoints/step0005000.ckpt", "step": 5000, "monitor": "val/psnr", "value": 24.71}


def test_a_run_that_fell_names_its_best_checkpoint_and_how_to_take_the_last_instead(tmp_path: Path) -> None:
    text = finished_summary("anna", "head", tmp_path, 10000, {"val/psnr": 23.10}, ["lips"], BEST)
    lines = text.splitlines()
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert lines[2] == ("warning: val/psnr fell to 23.10 dB by the end, 1.6 dB under the 24.71 dB of the checkpoint "
                        "kept at step 5000; later stages, infer.py and evaluate.py start from that one:")
    assert f"  best        {BEST['path']}" in lines
    assert f"python train.py subject=anna stage=lips init_from={last}" in text
    assert f"python evaluate.py subject=anna run={last}" in text
    assert lines.index("next:") > lines.index(f"  best        {BEST['path']}")


def test_no_warning_within_the_noise_of_one_run_or_without_a_kept_psnr(tmp_path: Path) -> None:
    for metrics, best in [({"val/psnr": 23.8}, BEST), ({"val/psnr": 23.10}, None), ({}, BEST),
                          ({"val/psnr": 23.10}, {**BEST, "monitor": "val/loss"})]:
        assert fall_warning("anna", tmp_path, metrics, best, ["lips"]) == []
        summary = finished_summary("anna", "head", tmp_path, 10000, metrics, ["lips"], best).splitlines()
        assert not any(line.startswith("warning:") for line in summary) and len(summary) == 6


def test_the_finished_record_keeps_the_best_checkpoint_the_run_kept(tmp_path: Path) -> None:
    import torch

    from ernerf.apps.runs import mark_finished, read_record
    from ernerf.apps.train import best_saved

    kept = tmp_path / "checkpoints" / "step0005000.ckpt"
    kept.parent.mkdir()
    torch.save({"global_step": 5000, "state_dict": {}}, kept)
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(kept.read_bytes())
    callback = SimpleNamespace(best_model_path=str(kept), best_model_score=torch.tensor(24.71), monitor="val/psnr")
    best = best_saved(SimpleNamespace(checkpoint_callback=callback))
    assert best == {"path": str(kept), "step": 5000, "monitor": "val/psnr", "value": pytest.approx(24.71)}
    mark_finished(tmp_path, 10000, {"val/psnr": 23.1}, None, best)
    assert read_record(tmp_path).best == best
    for empty in (None, SimpleNamespace(best_model_path="", best_model_score=None, monitor="val/psnr")):
        assert best_saved(SimpleNamespace(checkpoint_callback=empty)) is None


def test_a_chain_tells_of_a_stage_that_fell_as_it_ends(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from ernerf.apps.runs import mark_finished
    from ernerf.apps.train import warn_if_fell

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    mark_finished(tmp_path, 10000, {"val/psnr": 23.1}, None, BEST)
    with caplog.at_level("WARNING", logger="train"):
        warn_if_fell("anna", tmp_path, {"val/psnr": 23.1})
        warn_if_fell("anna", tmp_path, {"val/psnr": 24.5})  # within the noise: nothing
    assert [r.getMessage() for r in caplog.records] == [
        "val/psnr fell to 23.10 dB by the end, 1.6 dB under the 24.71 dB of the checkpoint kept at step 5000: later "
        f"stages, infer.py and evaluate.py take that one, {BEST['path']}"]


def test_a_stage_that_offers_its_last_notes_a_fall_without_the_warning(tmp_path: Path) -> None:
    text = finished_summary("anna", "torso", tmp_path, 10000, {"val/psnr": 23.10}, [], BEST, offers_best=False)
    lines = text.splitlines()
    assert lines[2] == ("note: val/psnr ended 1.6 dB under the 24.71 dB of step 5000; this stage offers its last "
                        "checkpoint all the same (stage.offer_best_if_fell=false: its validation does not score what "
                        "infer.py renders)")
    assert lines[1] == f"  checkpoint  {tmp_path / 'checkpoints' / 'last.ckpt'}" and "warning" not in text
    assert f"  best        {BEST['path']}" in lines
    within = finished_summary("anna", "torso", tmp_path, 10000, {"val/psnr": 23.8}, [], BEST, offers_best=False)
    assert "note:" not in within and len(within.splitlines()) == len(lines) - 2
