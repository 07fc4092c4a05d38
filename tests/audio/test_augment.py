"""SpeakerAugment: the vocal-tract warp moves a tone's band as a higher or lower tone would, the gain stays within its
range, and the training batches (not the validation frames) carry a new draw each time."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from ernerf.audio.augment import LOG_FLOOR, SpeakerAugment
from ernerf.audio.features import SAMPLE_RATE, LogMelExtractor
from ernerf.errors import ErnerfError, instantiate_config
from tests.conftest import compose
from tests.datamodules.test_subject import make_datamodule
from tests.synthetic import write_synthetic_subject


def tone_logmel(hz: float, seconds: float = 0.3) -> torch.Tensor:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return torch.from_numpy(LogMelExtractor()((0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)))  # [T, 80]


@pytest.mark.parametrize("hz", [300.0, 1200.0, 3000.0])
@pytest.mark.parametrize("alpha", [0.85, 1.18])
def test_the_warp_puts_a_tone_where_the_scaled_tone_is(hz: float, alpha: float) -> None:
    augment = SpeakerAugment()
    original, scaled = tone_logmel(hz)[10], tone_logmel(hz * alpha)[10]
    warped = augment.warp(original, torch.tensor([alpha]))
    assert int(scaled.argmax()) != int(original.argmax())  # the tone moved by more than a band: the test can fail
    assert abs(int(warped.argmax()) - int(scaled.argmax())) <= 1
    assert torch.allclose(augment.warp(original, torch.tensor([1.0])), original, atol=1e-3)


def test_gain_and_warp_stay_in_range_and_change_at_every_call() -> None:
    augment = SpeakerAugment(max_warp=1.2, gain_db=6.0)
    silence = torch.full((8, 16, 80), LOG_FLOOR)
    level = torch.full((8, 16, 80), -2.0)  # flat spectrum: the warp keeps it, the gain alone moves it
    torch.manual_seed(0)
    gains = torch.stack([augment(level)[0, 0, 0] + 2.0 for _ in range(200)])
    assert gains.abs().max() <= 6.0 / 10 * math.log(10) + 1e-5 and gains.std() > 0.5  # +-1.38 natural-log units
    out = augment(level)
    assert torch.allclose(out, out[0, 0, 0].expand(8, 16, 80))  # one draw for the whole window
    assert augment(silence).min() >= LOG_FLOOR
    none = SpeakerAugment(max_warp=1.0, gain_db=0.0)
    window = torch.randn(8, 16, 80)
    assert torch.allclose(none(window), window.clamp(min=LOG_FLOOR))


def test_bad_settings_and_other_feature_kinds_say_what_to_change() -> None:
    with pytest.raises(ErnerfError, match="max_warp"):
        SpeakerAugment(max_warp=0.9)
    with pytest.raises(ErnerfError, match="train without audio_augment=vtlp"):
        SpeakerAugment(n_mels=1024, feature_kind="hubert")
    with pytest.raises(ErnerfError, match="n_mels"):
        SpeakerAugment()(torch.zeros(8, 16, 1024))
    normalised, level = SpeakerAugment(feature_kind="meln", max_warp=1.0), torch.full((8, 16, 80), -2.0)
    assert normalised.gain == 0.0 and torch.allclose(normalised(level), level)  # meln removes any gain itself
    deep = torch.full((8, 16, 80), -25.0)  # a normalised row may lie below raw mel's silence floor: kept
    assert torch.allclose(normalised(deep), deep)


def test_training_batches_are_augmented_and_validation_frames_are_not(tmp_path: Path) -> None:
    root = write_synthetic_subject(tmp_path / "sphere", num_frames=12, size=32)
    cfg = compose("train", ["subject=sphere", "audio_augment=vtlp"])
    augment = instantiate(cfg.datamodule.audio_augment)
    assert isinstance(augment, SpeakerAugment) and augment.n_mels == cfg.audio_features.feature_dim
    for plain_choice in ([], ["audio_augment=none"]):  # the default, and what a sweep names beside vtlp
        assert compose("train", ["subject=sphere", *plain_choice]).datamodule.audio_augment is None
    with pytest.raises(ErnerfError, match="'hu' features have none"):
        instantiate_config(compose("train", ["subject=sphere", "audio_augment=vtlp", "audio_features=hubert"])
                           .datamodule.audio_augment)
    plain, augmented = make_datamodule(root, preload=True), make_datamodule(root, preload=True, audio_augment=augment)
    frame = torch.tensor([3])
    original = plain.store.audio_window_at(frame)
    first, second = augmented.train_rays.build(frame)["audio"], augmented.train_rays.build(frame)["audio"]
    assert first.shape == original.shape and not torch.equal(first, original) and not torch.equal(first, second)
    assert torch.equal(plain.train_rays.build(frame)["audio"], original)
    val = next(iter(augmented.val_dataloader()))
    assert torch.equal(val["audio"], plain.store.audio_window(val["frame"]))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_graphed_augmentation_draws_anew_at_every_replay() -> None:
    from ernerf.engine.cuda_graph import warm_and_capture

    augment, level = SpeakerAugment(), torch.full((8, 16, 80), -2.0, device="cuda")
    graph, out = warm_and_capture(lambda: augment(level))
    draws = []
    for _ in range(5):
        graph.replay()
        draws.append(float(out[0, 0, 0]))
    assert len(set(draws)) == 5 and all(abs(d + 2.0) <= 6.0 / 10 * math.log(10) + 1e-5 for d in draws)
