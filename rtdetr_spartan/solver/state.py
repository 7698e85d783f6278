"""The typed state of a run, the record of one epoch, and the hook interface of the loop.

:meth:`BaseSolver.setup_eval` returns an :class:`EvalState` and :meth:`BaseSolver.setup_train`
a :class:`TrainState`: every component is built once, in one step, and the loop passes the
state to the task's methods, so nothing downstream checks for a missing component.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader

from rtdetr_spartan.optim.ema import ModelEMA, unwrap_model

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

    from rtdetr_spartan.solver.base import BaseSolver

__all__ = ["EpochResult", "EvalState", "SolverHook", "TrainState"]


@dataclass
class EvalState:
    """What evaluation needs. ``model`` is the model as trained (DDP-wrapped in distributed runs);
    ``postprocessor`` is the config's, ``None`` when it declares none (classification needs none)."""

    model: nn.Module
    criterion: nn.Module
    postprocessor: nn.Module | None
    ema: ModelEMA | None
    val_loader: DataLoader[Any]

    @property
    def module(self) -> nn.Module:
        """The model without its DDP wrapper."""
        return unwrap_model(self.model)

    @property
    def eval_module(self) -> nn.Module:
        """The weights to evaluate: the EMA copy when EMA is on, else the model."""
        return self.ema.module if self.ema is not None else self.module


@dataclass
class TrainState(EvalState):
    """What training needs on top of :class:`EvalState`."""

    train_loader: DataLoader[Any]
    optimizer: torch.optim.Optimizer
    lr_scheduler: LRScheduler | None
    scaler: torch.amp.GradScaler | None

    @classmethod
    def extend(cls, base: EvalState, **train: Any) -> TrainState:
        return cls(**{f.name: getattr(base, f.name) for f in fields(EvalState)}, **train)

    @property
    def iteration_scheduler(self) -> LRScheduler | None:
        """The scheduler when it steps after every optimizer step (``step_per: iteration``)."""
        if getattr(self.lr_scheduler, "step_per", "epoch") == "iteration":
            return self.lr_scheduler
        return None


@dataclass(frozen=True)
class EpochResult:
    """One finished epoch: the task's train and evaluation statistics and whether it is the best."""

    epoch: int
    train_stats: dict[str, float]
    eval_stats: dict[str, Any]
    metric: float
    is_best: bool
    seconds: float


class SolverHook:
    """An extension point of :meth:`BaseSolver.fit` (detectron2's ``HookBase``): override any method.

    Hooks run on every rank, in registration order, after the epoch's checkpoints and log line;
    ``writer`` is the TensorBoard writer on rank 0 and ``None`` elsewhere. Attach one with
    :meth:`BaseSolver.register_hook` or list registered hooks under the config's ``hooks`` key.
    """

    def before_train(self, solver: BaseSolver, state: TrainState) -> None:
        """Called once, after setup (and resume), before the first epoch."""

    def after_epoch(
        self, solver: BaseSolver, state: TrainState, result: EpochResult, writer: SummaryWriter | None
    ) -> None:
        """Called after every finished epoch."""

    def after_train(self, solver: BaseSolver, state: TrainState) -> None:
        """Called once after the last epoch (not when training raised)."""
