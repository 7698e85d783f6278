"""WarmupCosineLR: the SpaRTAN recipe's schedule, its state round trip, and a warm-up longer
than the run clamped with one warning."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from torch import nn

from rtdetr_spartan.core import create
from rtdetr_spartan.optim.warmup_cosine import WarmupCosineLR, warmup_cosine_lr


def paper_lr(
    epoch: float,
    base: float = 2.5e-3,
    epochs: int = 300,
    warmup: int = 20,
    warmup_lr: float = 1e-4,
    min_lr: float = 1e-6,
) -> float:
    """Linear warm-up from warmup_lr to base over `warmup` epochs, then cosine to min_lr."""
    if epoch < warmup:
        return warmup_lr + (base - warmup_lr) * epoch / warmup
    t = (epoch - warmup) / (epochs - warmup)
    return min_lr + 0.5 * (base - min_lr) * (1 + math.cos(math.pi * t))


def _optimizer(lr: float = 2.5e-3) -> torch.optim.Optimizer:
    return torch.optim.AdamW([nn.Parameter(torch.zeros(3))], lr=lr)


@pytest.mark.parametrize("step_per, iters_per_epoch", [("epoch", 1), ("iteration", 5)])
def test_schedule_equals_warmup_cosine_formula_at_sampled_epochs(step_per: str, iters_per_epoch: int) -> None:
    optimizer = _optimizer()
    scheduler = create(
        {"type": "WarmupCosineLR", "warmup_epochs": 20, "warmup_lr": 1e-4, "min_lr": 1e-6, "step_per": step_per},
        {"epochs": 300},
        optimizer=optimizer,
        iters_per_epoch=iters_per_epoch,
    )
    unit = iters_per_epoch if step_per == "iteration" else 1
    sampled = {0, 1, 7, 19, 20, 21, 113, 150, 200, 299, 300}
    checked = 0
    for step in range(300 * unit + 1):
        if step % unit == 0 and step // unit in sampled:
            assert optimizer.param_groups[0]["lr"] == pytest.approx(paper_lr(step / unit), rel=1e-9), step
            checked += 1
        if step_per == "iteration" and step == 20 * unit + 2:  # mid-epoch: fractional epochs
            assert optimizer.param_groups[0]["lr"] == pytest.approx(paper_lr(20 + 2 / unit), rel=1e-9)
        optimizer.step()
        scheduler.step()
    assert checked == len(sampled)


def test_schedule_state_round_trip_continues_identically() -> None:
    first_opt, second_opt = _optimizer(), _optimizer()
    first = WarmupCosineLR(first_opt, epochs=10, warmup_epochs=2, iters_per_epoch=3)
    for _ in range(8):
        first_opt.step()
        first.step()
    second = WarmupCosineLR(second_opt, epochs=10, warmup_epochs=2, iters_per_epoch=3)
    second_opt.load_state_dict(first_opt.state_dict())
    second.load_state_dict(first.state_dict())
    for _ in range(15):
        first_opt.step(), second_opt.step()
        first.step(), second.step()
        assert first_opt.param_groups[0]["lr"] == second_opt.param_groups[0]["lr"]


def test_schedule_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="warmup_epochs must be >= 0, got -1"):
        WarmupCosineLR(_optimizer(), epochs=5, warmup_epochs=-1)
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        WarmupCosineLR(_optimizer(), epochs=0)
    with pytest.raises(ValueError, match="step_per"):
        WarmupCosineLR(_optimizer(), epochs=5, step_per="batch")


@pytest.mark.parametrize("epochs, warmup, expected", [(1, 20, 0), (5, 5, 4), (3, 20, 2)])
def test_warmup_longer_than_the_run_is_clamped_with_one_warning(
    epochs: int, warmup: int, expected: int, caplog: pytest.LogCaptureFixture
) -> None:
    optimizer = _optimizer()
    with caplog.at_level(logging.WARNING, logger="rtdetr_spartan.optim.warmup_cosine"):
        scheduler = WarmupCosineLR(optimizer, epochs=epochs, warmup_epochs=warmup, step_per="epoch")
    (record,) = caplog.records
    assert f"warmup_epochs={warmup}" in record.getMessage() and f"for {expected} epochs" in record.getMessage()
    lrs = []
    for _ in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    want = [warmup_cosine_lr(e, 2.5e-3, epochs, warmup, 1e-4, 1e-6) for e in range(epochs)]
    assert lrs == pytest.approx(want, rel=1e-9)
    # the clamped schedule: a warm-up of `expected` epochs, then the cosine from the base lr
    assert lrs[expected] == pytest.approx(2.5e-3)
    assert lrs == pytest.approx([paper_lr(e, epochs=epochs, warmup=expected) for e in range(epochs)], rel=1e-9)


def test_warmup_shorter_than_the_run_gives_no_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="rtdetr_spartan.optim.warmup_cosine"):
        WarmupCosineLR(_optimizer(), epochs=5, warmup_epochs=4)
    assert not caplog.records
