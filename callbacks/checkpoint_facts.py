"""What every checkpoint says of the stage that saved it and of its audio features, for inference and evaluation.

A checkpoint's weights and hparams rebuild the model; these facts say how to use it: which background it renders
over, which stages it was trained after, and which extractor turns new audio into the features it was trained on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

STAGE_KEY = "stage"  # checkpoint[STAGE_KEY]: StageFacts.as_record()
AUDIO_FEATURES_KEY = "audio_features"  # checkpoint[AUDIO_FEATURES_KEY]: the run's conf/audio_features config


@dataclass(frozen=True)
class StageFacts:
    """A trained stage: its name, the background it renders over, and the stages it starts from (first found wins)."""

    name: str
    background: str  # "torso": torso and neck over the plate (head, lips); "plate": the plate alone (torso)
    previous: tuple[str, ...] = ()

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> StageFacts:
        """The facts as a checkpoint holds them (plain types: checkpoints load with weights_only=True)."""
        return cls(str(record["name"]), str(record["background"]), tuple(str(p) for p in record.get("previous") or ()))

    def as_record(self) -> dict[str, Any]:
        """Plain types for the checkpoint."""
        return {"name": self.name, "background": self.background, "previous": list(self.previous)}


def plain(node: Mapping[str, Any] | DictConfig) -> dict[str, Any]:
    """A config node or mapping as plain dicts and lists, interpolations resolved (a fresh copy)."""
    return OmegaConf.to_container(OmegaConf.create(node), resolve=True)


class CheckpointFacts(L.Callback):
    """Adds the stage's facts and the audio-feature config to every checkpoint the trainer saves."""

    def __init__(self, stage: Mapping[str, Any], background: str, audio_features: Mapping[str, Any]) -> None:
        self.stage = StageFacts(str(stage["name"]), background, tuple(stage.get("previous") or ()))
        self.audio_features = plain(audio_features)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[STAGE_KEY] = self.stage.as_record()
        checkpoint[AUDIO_FEATURES_KEY] = plain(self.audio_features)  # a copy per checkpoint
