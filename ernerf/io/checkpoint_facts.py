"""What every checkpoint records of the stage that saved it and of its audio features, as plain types.

callbacks/checkpoint_facts.py writes these facts into every checkpoint at training; ernerf/apps/checkpoints.py reads
them back for inference and evaluation. They live here, apart from the Lightning callback, so that an entry point
finds a subject's trained stages (or refuses an untrained one) before it imports Lightning."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

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
