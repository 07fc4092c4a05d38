"""A subject's trained stages as inference and evaluation find them: each checkpoint with the facts it records.

Training writes the stage's facts and its audio-feature config into every checkpoint (callbacks/checkpoint_facts.py);
they are read back here, not derived from folder names. Checkpoints saved before that record existed fall back to
what the stage configs said when they were trained: the facts of the stage named by the run folder, and the extractor
of the feature kind in the model's hparams (docs/runs.md). Nothing here imports torch or Lightning (the facts are
read from a checkpoint's pickle alone): the entry points find the trained stage, or refuse an untrained one, before
they import the model code (ernerf/apps/preflight.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import OmegaConf

from ernerf.apps.runs import last_checkpoint, offered_checkpoint, peek_checkpoint
from ernerf.audio.features import AudioFeatureExtractor
from ernerf.errors import ErnerfError
from ernerf.io.checkpoint_facts import AUDIO_FEATURES_KEY, STAGE_KEY, StageFacts

# conf/stage/{head,lips,torso}.yaml as they were before checkpoints recorded their stage: an older checkpoint's facts,
# by the name of its run folder (a multirun folder `head-<overrides>` is a head stage).
LEGACY_STAGES = {
    "head": StageFacts("head", "torso"),
    "lips": StageFacts("lips", "torso", ("head",)),
    "torso": StageFacts("torso", "plate", ("lips", "head")),
}


@dataclass(frozen=True)
class TrainedStage:
    """A stage's checkpoint and what it records of itself."""

    checkpoint: Path
    stage: StageFacts
    audio_features: Mapping[str, Any] | None  # the run's audio_features config; None in checkpoints older than it

    def feature_file(self, kind: str) -> str:
        """The subject's precomputed features of the kind this stage was trained on (`aud_<kind>.npy`)."""
        return str((self.audio_features or {}).get("file") or f"aud_{kind}.npy")


def recorded_facts(checkpoint: Path) -> dict[str, Any]:
    """The facts a checkpoint records; {} when it records none or cannot be read (its loader will say why)."""
    saved = peek_checkpoint(checkpoint) or {}
    return {key: saved[key] for key in (STAGE_KEY, AUDIO_FEATURES_KEY) if key in saved}


def legacy_stage(run_name: str) -> StageFacts:
    """An older checkpoint's stage, by its run folder's name; an unknown stage renders over the torso background."""
    base = run_name.partition("-")[0]
    return LEGACY_STAGES.get(base, StageFacts(base, "torso"))


def read_trained(checkpoint: Path, run_name: str) -> TrainedStage:
    """A checkpoint and its facts; `run_name` (its run folder's name) stands in for an older checkpoint's stage."""
    record = recorded_facts(checkpoint)
    stage = StageFacts.from_record(record[STAGE_KEY]) if STAGE_KEY in record else legacy_stage(run_name)
    return TrainedStage(checkpoint, stage, record.get(AUDIO_FEATURES_KEY))


def trained_stages(runs_root: Path | str, subject: str) -> list[TrainedStage]:
    """The subject's trained stages in training order: each after the stages it starts from (then by save time).

    Only a stage's own run folder (`<runs_root>/<subject>/<stage>`) counts; multirun folders are given with run=.
    """
    found = []
    for ckpt in sorted(Path(runs_root, subject).glob("*/checkpoints/last.ckpt")):
        run_name = ckpt.parents[1].name
        trained = None if run_name.startswith(".") else read_trained(offered_checkpoint(ckpt.parents[1]), run_name)
        if trained is not None and trained.stage.name == run_name:
            found.append(trained)
    names = {t.stage.name for t in found}
    return sorted(found, key=lambda t: (len(names.intersection(t.stage.previous)), t.checkpoint.stat().st_mtime))


def find_trained(runs_root: Path | str, subject: str, stage: str | None = None) -> TrainedStage:
    """The stage `stage` of the subject (`<runs_root>/<subject>/<stage>/checkpoints/last.ckpt`, or its best kept
    checkpoint if the run fell: `offered_checkpoint`), or the latest one."""
    root = Path(runs_root) / subject
    if stage is not None:
        if not stage or Path(stage).name != stage or stage.startswith("."):
            raise ErnerfError(f"stage={stage} is not a stage name: give e.g. stage=lips, or leave it out for the "
                              "latest.")
        if last_checkpoint(root / stage).is_file():
            return read_trained(offered_checkpoint(root / stage), stage)
    found = trained_stages(runs_root, subject)
    if stage is None and found:
        return found[-1]
    wanted = stage or "head"
    trained = f" (trained: {', '.join(t.stage.name for t in found)})" if found else ""
    raise ErnerfError(f"no trained {stage or 'model'} checkpoint for subject {subject!r} under {root}{trained}: "
                      f"train it first with `python train.py stage={wanted} subject={subject}` "
                      "(or set paths.runs_root).")


def legacy_extractor(kind: str, feature_dim: int) -> dict[str, Any] | None:
    """The extractor conf/audio_features/ gives a feature kind, for checkpoints from before they recorded theirs;
    None: no such kind."""
    def speech_model(model_id: str) -> dict[str, Any]:
        return {"_target_": "ernerf.audio.features.HFSpeechExtractor", "model": model_id,
                "config_key": "audio_extractor.model"}

    return {"mel": {"_target_": "ernerf.audio.features.LogMelExtractor", "n_mels": feature_dim},
            "hu": speech_model("facebook/hubert-large-ls960-ft"),
            "w2v": speech_model("facebook/wav2vec2-large-960h")}.get(kind)


MODEL_KEYS = ("model", "model_path")  # a speech model's id or folder: the new key and the older one


def audio_extractor(trained: TrainedStage, kind: str, feature_dim: int,
                    overrides: Mapping[str, Any] | None = None) -> AudioFeatureExtractor:
    """The extractor the stage was trained with, `overrides` (e.g. a local model folder) merged in; for an older
    checkpoint, the extractor of its feature kind."""
    config = dict((trained.audio_features or {}).get("extractor") or legacy_extractor(kind, feature_dim) or {})
    if not config:
        raise ErnerfError(f"{trained.checkpoint} records no audio extractor and its features are of kind "
                          f"'{kind}': give precomputed features of this audio with features=<aud_{kind}.npy>.")
    # conf/infer.yaml lists `model: null` so that `audio_extractor.model=<id or folder>` needs no `+`
    overrides = {k: v for k, v in dict(overrides or {}).items() if not (k in MODEL_KEYS and v is None)}
    if any(k in overrides for k in MODEL_KEYS):
        # either key names the model: the recorded one must not win over what the user gives (model_path would)
        config = {k: v for k, v in config.items() if k not in MODEL_KEYS}
    if "config_key" in config:  # errors name the key of infer.py / evaluate.py, not the training config's
        config["config_key"] = "audio_extractor.model"
    return instantiate(OmegaConf.merge(OmegaConf.create(config), OmegaConf.create(overrides)))
