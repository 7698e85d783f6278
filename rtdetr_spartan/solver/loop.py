# Follows the design of RT-DETR (lyuwenyu/RT-DETR, Apache-2.0).
"""The one epoch loop of every task, and the one evaluation pass.

A task supplies only what differs (as detectron2's ``SimpleTrainer.run_step`` and torchvision's
``train_one_epoch``): a :class:`TrainStep` (``batch -> outputs`` and ``outputs, batch -> named
losses``) and, for evaluation, ``batch -> predictions``. The loop moves batches to the device,
runs the forward pass under autocast and the losses in float32 (as RT-DETR's reference, whose
criterion runs with autocast disabled), reduces the losses over the ranks and stops every rank
on a non-finite one, steps the optimizer (loss scaling, gradient clipping), the EMA and a
per-iteration scheduler, and keeps the meters.

What it reports is the same for every task:

- the epoch's statistics (``train_*`` in ``log.txt``, ``Train/<name>`` in TensorBoard):
  the rank-averaged mean ``loss`` (the sum of the task's terms) and of each term, and ``lr``, the
  learning rate of the epoch's **last** optimizer step (of the first parameter group);
- every ``print_freq`` iterations, on rank 0, a log line and the TensorBoard scalars
  ``Loss/total`` and ``Lr/pg_0`` at step ``epoch * len(loader) + iteration``.

Detection's tags are those of earlier versions; classification wrote its per-iteration loss as
``Loss/train`` and detection's epoch ``lr`` was the epoch mean before both ran through this loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import nn

from rtdetr_spartan.misc import dist
from rtdetr_spartan.misc.meters import MetricLogger
from rtdetr_spartan.solver.state import TrainState
from rtdetr_spartan.solver.steps import (
    autocast,
    backward_and_step,
    check_finite_loss,
    fault_point,
    log_iteration,
    progress,
)

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

__all__ = [
    "LoopSettings",
    "TrainStep",
    "float32",
    "predict_batches",
    "to_device",
    "train_one_epoch",
    "write_epoch_scalars",
]

logger = logging.getLogger(__name__)

Prediction = TypeVar("Prediction")


@dataclass(frozen=True)
class TrainStep:
    """A task's part of one training iteration, on a batch already on the device.

    ``forward(batch)`` runs the model (under autocast when AMP is on); ``losses(outputs, batch)``
    returns the named loss terms, computed from float32 outputs outside autocast. The loss
    that is back-propagated is the sum of the terms. Either may raise :class:`FloatingPointError`
    (collectively, on every rank); the loop adds the epoch and iteration to its message.
    """

    forward: Callable[[Any], Any]
    losses: Callable[[Any, Any], Mapping[str, torch.Tensor]]


@dataclass(frozen=True)
class LoopSettings:
    """The run's settings the loop reads: device, autocast dtype (None: no AMP), gradient
    clipping (0: off) and how often it logs (0: never)."""

    device: torch.device
    amp_dtype: torch.dtype | None = None
    clip_max_norm: float = 0.0
    print_freq: int = 50


def to_device(value: Any, device: torch.device) -> Any:
    """Every tensor in a (nested) batch moved to ``device`` (non-blocking from pinned memory)."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, Mapping):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device) for v in value)
    return value


def float32(value: Any) -> Any:
    """Floating tensors in a (nested) model output as float32, so losses are computed in fp32."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, Mapping):
        return {k: float32(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(float32(v) for v in value)
    return value


def _losses(step: TrainStep, batch: Any, settings: LoopSettings) -> tuple[torch.Tensor, dict[str, torch.Tensor], float]:
    """The loss to back-propagate, the rank-averaged terms and their total."""
    with autocast(settings.device, settings.amp_dtype):
        outputs = step.forward(batch)
    local = dict(step.losses(float32(outputs) if settings.amp_dtype is not None else outputs, batch))
    # Reduce before backward: every rank sees the same totals, so all stop together on NaN.
    reduced = dist.reduce_dict(local)
    total = check_finite_loss(reduced, local)
    return sum(local.values()), reduced, total  # type: ignore[return-value]


def train_one_epoch(
    state: TrainState, step: TrainStep, epoch: int, settings: LoopSettings, writer: SummaryWriter | None = None
) -> dict[str, float]:
    """One pass over ``state.train_loader``; returns the epoch's statistics (module docstring).

    The scheduler is stepped here after every optimizer step when it steps per iteration
    (``state.iteration_scheduler``); per-epoch schedulers are the caller's.
    """
    state.model.train()
    state.criterion.train()
    meters = MetricLogger()
    total = len(state.train_loader)
    bar = progress(state.train_loader, total, f"epoch {epoch}")
    for iteration, batch in enumerate(bar):
        fault_point(epoch, iteration)
        try:
            loss, reduced, loss_value = _losses(step, to_device(batch, settings.device), settings)
        except FloatingPointError as err:
            raise FloatingPointError(f"at epoch {epoch}, iteration {iteration}: {err}") from err
        backward_and_step(loss, state.model, state.optimizer, state.scaler, settings.clip_max_norm)
        lr = float(state.optimizer.param_groups[0]["lr"])  # the lr this step used
        if state.ema is not None:
            state.ema.update(state.model)
        if state.iteration_scheduler is not None:
            state.iteration_scheduler.step()
        meters.update(reduced, loss=loss_value, lr=lr)
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")
        if settings.print_freq > 0 and (iteration % settings.print_freq == 0 or iteration == total - 1):
            log_iteration(epoch, iteration, total, loss_value, lr, writer)
    meters.synchronize_between_processes()
    stats = meters.global_averages()
    if "lr" in meters.meters:
        stats["lr"] = meters.meters["lr"].value  # the last step's, not the epoch mean
    logger.info("epoch %d averaged: %s", epoch, "  ".join(f"{k}: {v:.4g}" for k, v in stats.items()))
    return stats


def predict_batches(
    model: nn.Module,
    loader: Iterable[Any],
    predict: Callable[[Any], Prediction],
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
) -> Iterator[tuple[Any, Prediction]]:
    """``(batch, predict(batch))`` for every batch of ``loader``, on ``device``, with ``model``
    in eval mode and gradients off; ``predict`` runs under autocast to ``amp_dtype`` when set.
    The task accumulates what it needs between the yields (outside autocast)."""
    model.eval()
    total = len(loader)  # type: ignore[arg-type]
    for batch in progress(loader, total, "eval"):
        batch = to_device(batch, device)
        with torch.no_grad(), autocast(device, amp_dtype):
            predictions = predict(batch)
        yield batch, predictions


def write_epoch_scalars(
    writer: SummaryWriter, epoch: int, train_stats: Mapping[str, float], eval_scalars: Mapping[str, float]
) -> None:
    """An epoch's ``Train/<name>`` and ``Test/<name>`` TensorBoard scalars."""
    for key, value in train_stats.items():
        writer.add_scalar(f"Train/{key}", value, epoch)
    for key, value in eval_scalars.items():
        writer.add_scalar(f"Test/{key}", value, epoch)
    writer.flush()
