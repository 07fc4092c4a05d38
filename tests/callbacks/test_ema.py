"""The EMA of the weights: what it averages, what validation and checkpoints see, and what it leaves alone."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from callbacks.ema import EMAWeights
from ernerf.errors import ErnerfError


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 2)
        self.frozen = nn.Parameter(torch.ones(2), requires_grad=False)
        self.register_buffer("grid", torch.tensor([True, False, True]))  # state like the occupancy grid


def fit_trainer(step: int) -> SimpleNamespace:
    return SimpleNamespace(global_step=step, state=SimpleNamespace(fn="fit"))


def test_average_swaps_in_for_validation_and_checkpoints_and_survives_a_resume() -> None:
    torch.manual_seed(0)
    model = Tiny()
    w0 = model.layer.weight.detach().clone()
    ema = EMAWeights(decay=0.75, every_n_steps=2, warmup=False)
    ema.on_fit_start(fit_trainer(0), model)
    w1 = torch.randn(2, 2)
    model.layer.weight.data.copy_(w1)
    ema.on_train_batch_end(fit_trainer(1), model)  # not a multiple of 2: no update
    ema.on_train_batch_end(fit_trainer(2), model)
    expected = 0.75 * w0 + 0.25 * w1
    model.grid[1] = True  # the grid moves on between updates: it is the model's, not averaged

    ema.on_validation_epoch_start(fit_trainer(2), model)
    torch.testing.assert_close(model.layer.weight.detach(), expected)
    assert model.grid.tolist() == [True, True, True]
    ema.on_validation_epoch_end(fit_trainer(2), model)
    torch.testing.assert_close(model.layer.weight.detach(), w1)

    checkpoint = {"state_dict": model.state_dict()}
    ema.on_save_checkpoint(fit_trainer(2), model, checkpoint)
    torch.testing.assert_close(checkpoint["state_dict"]["layer.weight"], expected)  # what infer.py renders with
    torch.testing.assert_close(checkpoint["ema_current_state"]["layer.weight"], w1)
    assert checkpoint["state_dict"]["grid"].tolist() == [True, True, True]
    torch.testing.assert_close(model.layer.weight.detach(), w1)  # saving changed nothing in the model

    resumed, ema2 = Tiny(), EMAWeights(decay=0.75, every_n_steps=2, warmup=False)
    resumed.load_state_dict(checkpoint["state_dict"])  # what Lightning does first
    ema2.on_load_checkpoint(fit_trainer(2), resumed, checkpoint)
    ema2.on_fit_start(fit_trainer(2), resumed)
    torch.testing.assert_close(resumed.layer.weight.detach(), w1)  # training continues from the current weights
    with ema2.averaged(resumed):
        torch.testing.assert_close(resumed.layer.weight.detach(), expected)
    torch.testing.assert_close(resumed.layer.weight.detach(), w1)
    assert ema2.updates == 1  # the warm-up goes on where it was
    assert ema2.names == ["layer.weight", "layer.bias"]  # frozen parameters are not averaged


def test_settings_are_checked() -> None:
    with pytest.raises(ErnerfError, match="decay"):
        EMAWeights(decay=1.0)
    with pytest.raises(ErnerfError, match="every_n_steps"):
        EMAWeights(every_n_steps=0)


def test_warmup_lets_the_first_updates_follow_the_weights() -> None:
    model = Tiny()
    ema = EMAWeights(decay=0.95, every_n_steps=1)
    ema.on_fit_start(fit_trainer(0), model)
    w1 = model.layer.weight.detach() + 1.0
    model.layer.weight.data.copy_(w1)
    ema.on_train_batch_end(fit_trainer(1), model)  # first update: d = min(0.95, 1 / 10) = 0.1
    with ema.averaged(model):
        torch.testing.assert_close(model.layer.weight.detach(), w1 - 0.1)
    for step in range(2, 400):
        ema.on_train_batch_end(fit_trainer(step), model)
    assert min(ema.decay, (1 + ema.updates) / (10 + ema.updates)) == 0.95  # warmed up


def test_the_end_of_training_brings_the_average_up_to_date() -> None:
    """A run ending between updates (or shorter than every_n_steps) still saves an average that saw its last weights;
    one ending on an update step is not updated twice."""
    model = Tiny()
    w0 = model.layer.weight.detach().clone()
    ema = EMAWeights(decay=0.5, every_n_steps=10, warmup=False)
    ema.on_fit_start(fit_trainer(0), model)
    w4 = w0 + 1.0
    model.layer.weight.data.copy_(w4)
    for step in range(1, 5):
        ema.on_train_batch_end(fit_trainer(step), model)
    assert ema.updates == 0
    ema.on_train_end(fit_trainer(4), model)
    with ema.averaged(model):
        torch.testing.assert_close(model.layer.weight.detach(), 0.5 * w0 + 0.5 * w4)
    ema.on_train_end(fit_trainer(4), model)
    assert ema.updates == 1
