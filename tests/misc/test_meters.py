"""Meters: sliding-window and whole-run statistics, and named meters (one process)."""

from __future__ import annotations

import math

import pytest
import torch

from rtdetr_spartan.misc.meters import MetricLogger, SmoothedValue


def test_smoothed_value_and_metric_logger() -> None:
    meter = SmoothedValue(window_size=2)
    for value in (1.0, 2.0, 6.0):
        meter.update(value)
    assert (meter.value, meter.avg, meter.median, meter.max, meter.global_avg) == (6.0, 4.0, 2.0, 6.0, 3.0)
    logger = MetricLogger()
    logger.update({"loss": torch.tensor(2.0)}, lr=0.1)
    logger.update(loss=4.0, lr=0.2)
    logger.synchronize_between_processes()  # a no-op in one process
    assert logger.global_averages() == pytest.approx({"loss": 3.0, "lr": 0.15})
    assert logger.latest() == {"loss": 4.0, "lr": 0.2}


def test_empty_meter_is_nan_and_window_must_hold_a_value() -> None:
    meter = SmoothedValue()
    assert all(math.isnan(v) for v in (meter.value, meter.avg, meter.median, meter.max, meter.global_avg))
    with pytest.raises(ValueError, match="window_size must be >= 1, got 0"):
        SmoothedValue(window_size=0)
