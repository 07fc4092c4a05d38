"""The end of a training run: its figures, its files and the commands that come next."""

from __future__ import annotations

from pathlib import Path

from ernerf.apps.next_steps import figures_line, finished_summary


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
