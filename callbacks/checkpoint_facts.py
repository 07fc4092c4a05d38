"""What every checkpoint says of the stage that saved it and of its audio features, for inference and evaluation.

A checkpoint's weights and hparams rebuild the model; these facts say how to use it: which background it renders
over, which stages it was trained after, and which extractor turns new audio into the features it was trained on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

# the facts and their keys, without Lightning (ernerf/io/checkpoint_facts.py), as this module has always named them
from ernerf.io.checkpoint_facts import AUDIO_FEATURES_KEY, STAGE_KEY, StageFacts

__all__ = ["AUDIO_FEATURES_KEY", "STAGE_KEY", "CheckpointFacts", "StageFacts", "plain"]


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
