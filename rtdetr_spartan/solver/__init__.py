"""Solvers: the training and evaluation loops of each task, on a shared base
(device, DDP, AMP, EMA, checkpoints). ``TASKS`` maps a config's ``task`` to its solver class."""

from __future__ import annotations

from rtdetr_spartan.core import ConfigError, YAMLConfig
from rtdetr_spartan.solver.base import BaseSolver
from rtdetr_spartan.solver.cls_solver import ClsSolver
from rtdetr_spartan.solver.det_solver import DetSolver

__all__ = ["TASKS", "BaseSolver", "DetSolver", "build_solver"]

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
