"""Solvers: one training loop (:class:`BaseSolver`: device, DDP, AMP, EMA, optimizer,
checkpoints, hooks) and each task's epoch, evaluation and metric. ``TASKS`` maps a config's
``task`` to its solver class."""

from __future__ import annotations

from rtdetr_spartan.core import ConfigError, YAMLConfig
from rtdetr_spartan.solver.base import BaseSolver
from rtdetr_spartan.solver.cls_solver import ClsSolver
from rtdetr_spartan.solver.det_solver import DetSolver
from rtdetr_spartan.solver.state import EpochResult, EvalState, SolverHook, TrainState

__all__ = [
    "TASKS",
    "BaseSolver",
    "ClsSolver",
    "DetSolver",
    "EpochResult",
    "EvalState",
    "SolverHook",
    "TrainState",
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
