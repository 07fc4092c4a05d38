"""How inference and evaluation find a subject's trained stages and read what their checkpoints record."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from callbacks.checkpoint_facts import StageFacts
from ernerf.apps.checkpoints import audio_extractor, find_trained, read_trained, trained_stages
from ernerf.audio.features import HFSpeechExtractor, LogMelExtractor
from ernerf.errors import ErnerfError


def save_checkpoint(runs: Path, subject: str, folder: str, **record: object) -> Path:
    """A stand-in last.ckpt holding `record` (empty when none is given: an older or unreadable checkpoint)."""
    path = runs / subject / folder / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True, exist_ok=True)
    if record:
        torch.save({"global_step": 1, **record}, path)
    else:
        path.write_bytes(b"")
    return path


def stage_record(name: str, background: str, *previous: str) -> dict:
    return {"name": name, "background": background, "previous": list(previous)}


def test_older_checkpoints_are_found_by_their_run_folders(tmp_path: Path) -> None:
    with pytest.raises(ErnerfError, match=r"no trained model .* `python train.py stage=head subject=anna`"):
        find_trained(tmp_path, "anna")
    head = save_checkpoint(tmp_path, "anna", "head")
    assert find_trained(tmp_path, "anna").checkpoint == head
    torso = save_checkpoint(tmp_path, "anna", "torso")
    save_checkpoint(tmp_path, "anna", "lips")
    latest = find_trained(tmp_path, "anna")
    assert latest.checkpoint == torso and latest.stage == StageFacts("torso", "plate", ("lips", "head"))
    assert latest.audio_features is None and latest.feature_file("mel") == "aud_mel.npy"
    assert find_trained(tmp_path, "anna", "head").stage.background == "torso"
    with pytest.raises(ErnerfError, match=r"no trained neck .*\(trained: head, lips, torso\).*stage=neck subject=anna"):
        find_trained(tmp_path, "anna", "neck")
    with pytest.raises(ErnerfError, match="not a stage name"):
        find_trained(tmp_path, "anna", "../bob/head")
    sweep = save_checkpoint(tmp_path, "anna", "torso-encoder.log2_hashmap_size=14")
    assert read_trained(sweep, sweep.parents[1].name).stage.background == "plate"  # a multirun folder of the torso


def test_recorded_facts_order_the_stages_not_their_names(tmp_path: Path) -> None:
    """A stage the code has never heard of is ordered by what it starts from and renders over its own background."""
    save_checkpoint(tmp_path, "anna", "head", stage=stage_record("head", "torso"))
    closeup = save_checkpoint(tmp_path, "anna", "closeup", stage=stage_record("closeup", "plate", "head"),
                              audio_features={"kind": "mel", "feature_dim": 40, "file": "aud_mel40.npy"})
    os.utime(closeup, (1, 1))  # saved first: the order comes from `previous`, not from the clock
    save_checkpoint(tmp_path, "anna", "head-seed=1", stage=stage_record("head", "torso"))  # a multirun job
    assert [t.stage.name for t in trained_stages(tmp_path, "anna")] == ["head", "closeup"]
    latest = find_trained(tmp_path, "anna")
    assert latest.checkpoint == closeup and latest.stage == StageFacts("closeup", "plate", ("head",))
    assert latest.feature_file("mel") == "aud_mel40.npy"


def test_the_extractor_comes_from_the_checkpoint_with_overrides_and_a_fallback_by_kind(tmp_path: Path) -> None:
    recorded = save_checkpoint(tmp_path, "anna", "head", stage=stage_record("head", "torso"), audio_features={
        "kind": "mel", "feature_dim": 40, "extractor": {"_target_": "ernerf.audio.features.LogMelExtractor",
                                                        "n_mels": 40, "fmax": 7000.0}})
    trained = read_trained(recorded, "head")
    extractor = audio_extractor(trained, "mel", 40)
    assert isinstance(extractor, LogMelExtractor) and (extractor.n_mels, extractor.fmax) == (40, 7000.0)
    assert audio_extractor(trained, "mel", 40, {"fmax": 6000.0}).fmax == 6000.0

    older = read_trained(save_checkpoint(tmp_path, "bob", "head"), "head")
    assert audio_extractor(older, "mel", 64).n_mels == 64  # conf/audio_features/mel.yaml's n_mels: feature_dim
    hubert = audio_extractor(older, "hu", 1024, {"model_path": "/models/hubert"})
    assert isinstance(hubert, HFSpeechExtractor) and hubert.source == "/models/hubert"
    assert audio_extractor(older, "w2v", 1024).source == "facebook/wav2vec2-large-960h"  # conf/'s default model
    assert audio_extractor(older, "hu", 1024, {"model": None}).source == "facebook/hubert-large-ls960-ft"
    with pytest.raises(ErnerfError, match="records no audio extractor"):
        audio_extractor(older, "ds", 29, {"model": None})  # conf/infer.yaml's `model: null` adds no extractor
    with pytest.raises(ErnerfError, match="records no audio extractor .* features=<aud_ds.npy>"):
        audio_extractor(older, "ds", 29)


def test_a_model_given_at_inference_replaces_the_recorded_one_whichever_key(tmp_path: Path) -> None:
    recorded = {"_target_": "ernerf.audio.features.HFSpeechExtractor", "model_path": "/trainer/machine/hubert",
                "config_key": "audio_features.extractor.model_path"}
    trained = read_trained(save_checkpoint(tmp_path, "anna", "head", stage=stage_record("head", "torso"),
                                           audio_features={"kind": "hu", "feature_dim": 1024, "extractor": recorded}),
                           "head")
    assert audio_extractor(trained, "hu", 1024, {"model": None}).source == "/trainer/machine/hubert"
    moved = audio_extractor(trained, "hu", 1024, {"model": "facebook/hubert-large-ls960-ft"})
    assert moved.source == "facebook/hubert-large-ls960-ft" and moved.model_path is None
    assert moved.config_key == "audio_extractor.model"  # errors name the key infer.py takes


def test_a_checkpoints_plain_entries_are_read_without_building_its_tensors(tmp_path: Path) -> None:
    """What refusals read of a checkpoint (its step, the facts it records) comes from its pickle alone: the same values
    torch.load gives, tensors and objects left out; a file it cannot read goes to torch.load (which refuses one cut
    short)."""
    from collections import OrderedDict

    from ernerf.apps.runs import checkpoint_step, peek_checkpoint, plain_entries

    saved = {"global_step": 7, "stage": stage_record("lips", "torso", "head"), "audio_features": {"kind": "mel"},
             "state_dict": OrderedDict(w=torch.ones(3)), "optimizer_states": [{"state": {0: torch.zeros(2)}}],
             "loops": {"nested": [1, 2.5, "x", None, True]}, "path": Path("a/b")}
    path = tmp_path / "last.ckpt"
    torch.save(saved, path)
    plain = plain_entries(path)
    assert plain == {k: saved[k] for k in ("global_step", "stage", "audio_features", "loops")}
    assert peek_checkpoint(path) == plain and checkpoint_step(path) == 7
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert plain_entries(cut) is None and peek_checkpoint(cut) is None and checkpoint_step(cut) is None


def finish_run(run_dir: Path, final_psnr: float, best_psnr: float, offers_best: bool = True) -> Path:
    """finished.json of a run whose last validation scored `final_psnr` and whose kept checkpoint `best_psnr`."""
    from ernerf.apps.runs import mark_finished

    best = run_dir / "checkpoints" / "step0004000.ckpt"
    torch.save({"global_step": 4000, "stage": stage_record("head", "torso")}, best)
    mark_finished(run_dir, 10000, {"val/psnr": final_psnr}, None,
                  {"path": str(best), "step": 4000, "monitor": "val/psnr", "value": best_psnr}, offers_best)
    return best


def test_a_run_that_fell_offers_its_best_checkpoint_to_inference_evaluation_and_later_stages(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from ernerf.apps.chain import initial_checkpoint
    from ernerf.apps.evaluation.frames import resolve_target
    from ernerf.apps.runs import offered_checkpoint
    from tests.conftest import compose

    last = save_checkpoint(tmp_path, "anna", "head", stage=stage_record("head", "torso"))
    run_dir = last.parents[1]
    assert offered_checkpoint(run_dir) == last  # not finished: its last
    best = finish_run(run_dir, final_psnr=24.5, best_psnr=25.2)
    assert offered_checkpoint(run_dir) == last  # within the noise of one run: its last
    finish_run(run_dir, final_psnr=23.1, best_psnr=25.2)
    assert offered_checkpoint(run_dir) == best
    assert find_trained(tmp_path, "anna", "head").checkpoint == best
    assert find_trained(tmp_path, "anna").checkpoint == best
    assert resolve_target(tmp_path, "anna", str(run_dir)).trained.checkpoint == best
    assert resolve_target(tmp_path, "anna", str(last)).trained.checkpoint == last  # a file given is that file
    lips = compose("train", ["subject=anna", "stage=lips", f"paths.runs_root={tmp_path}"])
    with caplog.at_level("WARNING", logger="ernerf.apps.chain"):
        assert initial_checkpoint(lips) == str(best)
    assert [r.getMessage() for r in caplog.records] == [
        f"the head run in {run_dir} fell by its end: lips starts from its best checkpoint, {best}"]
    assert initial_checkpoint(compose("train", ["subject=anna", "stage=lips", f"init_from={last}"])) == str(last)
    best.unlink()  # gone (a user tidied up): the last one, rather than nothing
    assert offered_checkpoint(run_dir) == last and find_trained(tmp_path, "anna", "head").checkpoint == last


def test_a_stage_that_does_not_offer_its_best_offers_its_last_however_far_its_validation_fell(tmp_path: Path) -> None:
    from ernerf.apps.runs import offered_checkpoint, read_record

    last = save_checkpoint(tmp_path, "anna", "torso", stage=stage_record("torso", "plate", "lips", "head"))
    run_dir = last.parents[1]
    finish_run(run_dir, final_psnr=28.4, best_psnr=29.9, offers_best=False)
    record = read_record(run_dir)
    assert record.drop() == pytest.approx(1.5) and record.fall() is None and not record.offers_best
    assert offered_checkpoint(run_dir) == last and find_trained(tmp_path, "anna", "torso").checkpoint == last
    finish_run(run_dir, final_psnr=28.4, best_psnr=29.9)  # the same figures from a stage that offers it
    assert offered_checkpoint(run_dir) != last and read_record(run_dir).fall() == pytest.approx(1.5)
    finished = run_dir / "finished.json"
    finished.write_text(finished.read_text().replace('"offers_best": true, ', ''))  # a record from before the key
    assert read_record(run_dir).offers_best and offered_checkpoint(run_dir) != last
