"""callbacks.checkpoint_facts: the stage's facts and the audio-feature config go into every checkpoint, as plain
types."""

from __future__ import annotations

from omegaconf import OmegaConf

from callbacks.checkpoint_facts import CheckpointFacts, StageFacts
from tests.conftest import compose


def test_every_stage_records_its_facts_and_its_extractor() -> None:
    from hydra.utils import instantiate

    expected = {"head": ("torso", []), "lips": ("torso", ["head"]), "torso": ("plate", ["lips", "head"])}
    for name, (background, previous) in expected.items():
        cfg = compose("train", ["subject=x", f"stage={name}", "audio_features=hubert",
                                "audio_features.extractor.model_path=/models/hubert"])
        OmegaConf.resolve(cfg)  # as train.py does before it builds the callbacks
        checkpoint: dict = {}
        instantiate(cfg.callbacks.checkpoint_facts).on_save_checkpoint(None, None, checkpoint)
        assert checkpoint["stage"] == {"name": name, "background": background, "previous": previous}
        assert StageFacts.from_record(checkpoint["stage"]) == StageFacts(name, background, tuple(previous))
        extractor = checkpoint["audio_features"]["extractor"]
        assert type(extractor) is dict and extractor["_target_"].endswith("HFSpeechExtractor")  # recorded, not built
        assert extractor["model_path"] == "/models/hubert" and checkpoint["audio_features"]["kind"] == "hu"


def test_each_checkpoint_gets_its_own_copy() -> None:
    callback = CheckpointFacts({"name": "head"}, "torso", {"kind": "mel", "extractor": {"n_mels": 80}})
    first: dict = {}
    callback.on_save_checkpoint(None, None, first)
    first["audio_features"]["extractor"]["n_mels"] = 1
    second: dict = {}
    callback.on_save_checkpoint(None, None, second)
    assert second["audio_features"]["extractor"]["n_mels"] == 80 and second["stage"]["previous"] == []
