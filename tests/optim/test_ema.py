"""ModelEMA: the warm-up ramp of the decay, the averaged values, integer buffers, state round trip."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from rtdetr_spartan.optim.ema import ModelEMA


def _model(value: float) -> nn.Module:
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)
    return model


def test_decay_ramps_up_as_rtdetr() -> None:
    ema = ModelEMA(_model(0.0), decay=0.9999, warmups=2000)
    assert ema.current_decay() == 0.0  # the first update copies the model
    ema.updates = 2000
    assert ema.current_decay() == pytest.approx(0.9999 * (1 - math.exp(-1)))
    assert ModelEMA(_model(0.0), decay=0.9, warmups=0).current_decay() == 0.9


def test_update_averages_floats_and_copies_integer_buffers() -> None:
    model = _model(0.0)
    ema = ModelEMA(model, decay=0.5, warmups=0)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)
    model[1].num_batches_tracked.fill_(7)
    ema.update(model)
    ema.update(model)
    state = ema.module.state_dict()
    torch.testing.assert_close(state["0.weight"], torch.full((2, 2), 0.75))  # 0 -> 0.5 -> 0.75
    assert int(state["1.num_batches_tracked"]) == 7
    assert not any(p.requires_grad for p in ema.module.parameters())
    assert ema.updates == 2


def test_state_dict_round_trip_continues_identically() -> None:
    model = _model(1.0)
    first = ModelEMA(_model(0.0), decay=0.9, warmups=3)
    for _ in range(4):
        first.update(model)
    second = ModelEMA(_model(5.0), decay=0.9, warmups=100)
    second.load_state_dict(first.state_dict())
    assert (second.updates, second.warmups) == (4, 3)
    first.update(model)
    second.update(model)
    for key, value in first.module.state_dict().items():
        assert torch.equal(value, second.module.state_dict()[key]), key


def test_decay_outside_the_open_interval_is_refused() -> None:
    with pytest.raises(ValueError, match=r"ema.decay must be in \(0, 1\), got 1.0"):
        ModelEMA(_model(0.0), decay=1.0)
