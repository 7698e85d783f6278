"""Solvers: one training loop (:class:`BaseSolver`: device, DDP, AMP, EMA, optimizer,
checkpoints, hooks), one epoch loop (:mod:`rtdetr_spartan.solver.loop`), and each task's
training step, evaluation and metric. ``TASKS`` maps a config's ``task`` to its solver class;
importing the package registers the hooks of :mod:`rtdetr_spartan.solver.hooks`."""

from __future__ import annotations

from rtdetr_spartan.core import ConfigError, YAMLConfig
from rtdetr_spartan.solver.base import BaseSolver
from rtdetr_spartan.solver.cls_solver import ClsSolver
from rtdetr_spartan.solver.det_solver import DetSolver
from rtdetr_spartan.solver.hooks import CamLoggingHook
from rtdetr_spartan.solver.loop import LoopSettings, TrainStep
from rtdetr_spartan.solver.state import EpochResult, EvalState, SolverHook, TrainState

__all__ = [
    "TASKS",
    "BaseSolver",
    "CamLoggingHook",
    "ClsSolver",
    "DetSolver",
    "EpochResult",
    "EvalState",
    "LoopSettings",
    "SolverHook",
    "TrainState",
    "TrainStep",
    "build_solver",
]

TASKS: dict[str, type[BaseSolver]] = {
    "detection": DetSolver,
    "classification": ClsSolver,
}


def build_solver(cfg: YAMLConfig) -> BaseSolver:
    """The solver for ``cfg.task``; an unknown task names the valid ones."""
    task = cfg.task
    if task not in TASKS:
        raise ConfigError(f"{cfg.path}: task '{task}' has no solver; expected one of {sorted(TASKS)}")
    return TASKS[task](cfg)
