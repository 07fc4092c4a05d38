"""audio_features step: one 16-row window per video frame, aligned with the frame's time."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hydra.utils import instantiate

from ernerf.errors import ErnerfError
from ernerf.io.audio import write_wav
from ernerf.io.layout import SubjectLayout
from ernerf.preprocess.base import StepContext, run_steps
from tests.audio.test_features import tone_burst
from tests.conftest import compose


def configured_step(*overrides: str):
    return instantiate(compose("preprocess", ["subject=test", *overrides]).preprocess.steps.audio_features)


@pytest.mark.parametrize("clip", ["train/trump_10s.mp4", "train/hdtf_aoc_8s.mp4"])
def test_real_clip_has_one_window_per_frame(prepare_subject, clip: str) -> None:
    layout = SubjectLayout(prepare_subject(clip, upto="audio_features"))  # the configured step, in the pipeline
    feats = np.load(layout.audio_features("mel"))
    assert feats.dtype == np.float32 and np.isfinite(feats).all()
    assert feats.shape == (StepContext(layout=layout).num_frames, 16, 80)
    loudness = feats.max(axis=(1, 2))
    assert loudness.max() - np.percentile(loudness, 5) > 3.0  # speech and pauses differ


def test_burst_is_found_in_its_frame(tmp_path) -> None:
    layout = SubjectLayout(tmp_path / "subj")
    layout.root.mkdir()
    layout.meta.write_text(json.dumps({"fps": 25, "num_frames": 100}))
    write_wav(layout.audio, tone_burst(4.0, at=(60 + 0.5) / 25 - 0.01))  # centred on frame 60
    run_steps([configured_step()], StepContext(layout=layout))
    energy = np.load(layout.audio_features("mel")).max(axis=2)  # [N, 16]
    assert energy.shape == (100, 16)
    assert int(np.argmax(energy[:, 7:9].max(axis=1))) == 60
    assert int(np.argmax(energy[60])) in (7, 8)


def test_hubert_offline_without_the_model_names_the_download(tmp_path, monkeypatch) -> None:
    pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    layout = SubjectLayout(tmp_path / "subj")
    layout.root.mkdir()
    layout.meta.write_text(json.dumps({"fps": 25, "num_frames": 25}))
    write_wav(layout.audio, tone_burst(1.0, 0.5))
    step = configured_step("audio_features=hubert", f"audio_features.extractor.cache_dir={tmp_path / 'empty_cache'}")
    assert step.kind == "hu" and step.extractor.model == "facebook/hubert-large-ls960-ft"
    with pytest.raises(ErnerfError, match=r"huggingface-cli download facebook/hubert-large-ls960-ft.*"
                                          r"audio_features\.extractor\.model="):
        run_steps([step], StepContext(layout=layout))
    assert not layout.audio_features("hu").exists()
    wav2vec2 = configured_step("audio_features=wav2vec2", "audio_features.extractor.model=null")
    with pytest.raises(ErnerfError, match=r"no speech model given: set audio_features\.extractor\.model="):
        run_steps([wav2vec2], StepContext(layout=layout))
