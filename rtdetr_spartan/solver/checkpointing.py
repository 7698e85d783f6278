# Follows the design of RT-DETR (lyuwenyu/RT-DETR, Apache-2.0).
"""What a run's checkpoint holds and how it is restored into a run's state.

A checkpoint holds the model, the EMA, optimizer, scheduler and scaler states, the finished
epoch, the best-metric record, every rank's RNG states, the task, the package version and the
resolved config (:func:`training_checkpoint`); :func:`restore_state` loads one into an
:class:`EvalState` / :class:`TrainState` and returns the run's progress (:class:`Restored`).
"""

from __future__ import annotations

import copy
import datetime
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

import rtdetr_spartan
from rtdetr_spartan.core import YAMLConfig
from rtdetr_spartan.misc import dist
from rtdetr_spartan.misc.checkpoint import extract_state_dict, load_model_weights
from rtdetr_spartan.solver.optimization import rebuild_scheduler
from rtdetr_spartan.solver.rng import rng_state
from rtdetr_spartan.solver.state import EvalState, TrainState

__all__ = ["Restored", "restore_state", "stateful_parts", "training_checkpoint"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Restored:
    """A restored run's progress: its last finished epoch, best-metric record (None when the
    file holds none) and this rank's saved RNG states (None: keep the current ones)."""

    last_epoch: int
    best: dict[str, Any] | None
    rng: dict[str, Any] | None


def stateful_parts(state: EvalState) -> dict[str, Any]:
    """The components whose ``state_dict`` a checkpoint holds (besides the model)."""
    parts: dict[str, Any] = {"ema": state.ema}
    if isinstance(state, TrainState):
        parts.update(optimizer=state.optimizer, lr_scheduler=state.lr_scheduler, scaler=state.scaler)
    return {name: part for name, part in parts.items() if part is not None}


def training_checkpoint(
    cfg: YAMLConfig, state: TrainState, device: torch.device, last_epoch: int, best: Mapping[str, Any]
) -> dict[str, Any]:
    """The full training state. Collective in distributed runs (gathers every rank's RNG)."""
    checkpoint: dict[str, Any] = {
        "model": state.module.state_dict(),
        "epoch": last_epoch,
        "best": dict(best),
        "rng": dist.all_gather_object(rng_state(device, state.train_loader.generator)),
        "task": cfg.task,
        "config": copy.deepcopy(cfg.yaml_cfg),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "version": rtdetr_spartan.__version__,
    }
    for name, part in stateful_parts(state).items():
        checkpoint[name] = part.state_dict()
    return checkpoint


def restore_state(cfg: YAMLConfig, state: EvalState, checkpoint: Mapping[str, Any], source: str, seed: int) -> Restored:
    """Load ``checkpoint`` into ``state``.

    The model must match exactly (use tuning to load partially). A file without a ``model``
    entry (published RT-DETR weights: ``{'ema': {'module': ...}}``) loads its EMA weights into
    the model. Components the file lacks start fresh (an EMA restarts from the loaded model). A
    checkpoint of a run planned for another number of ``epochs`` gets a schedule rebuilt for
    ``cfg.epochs``. Saved by another number of processes, the random streams are reseeded.
    """
    weights = checkpoint["model"] if "model" in checkpoint else extract_state_dict(checkpoint)
    load_model_weights(state.module, {"model": weights}, strict=True)
    # Reference RT-DETR checkpoints call the finished epoch 'last_epoch'.
    last_epoch = int(checkpoint.get("epoch", checkpoint.get("last_epoch", -1)))
    planned = _planned_epochs(checkpoint, cfg.epochs)
    extend = "lr_scheduler" in checkpoint and planned != cfg.epochs
    for name, part in stateful_parts(state).items():
        if name == "lr_scheduler" and extend:
            continue  # rebuilt below, after the optimizer's state
        if name in checkpoint:
            part.load_state_dict(checkpoint[name])
            continue
        logger.warning("%s: no '%s' state; %s starts fresh", source, name, name)
        if name == "ema":
            state.ema = cfg.build("ema", model=state.module)
    if isinstance(state, TrainState) and extend and state.lr_scheduler is not None:
        steps = int(checkpoint["lr_scheduler"].get("last_epoch", 0))
        state.lr_scheduler = rebuild_scheduler(cfg, state.optimizer, state.train_loader, steps)
        logger.warning(
            "%s: run planned for %d epochs, continued for epochs=%d: the lr schedule is rebuilt for %d epochs "
            "and advanced past %d finished epochs (%d scheduler steps)",
            source,
            planned,
            cfg.epochs,
            cfg.epochs,
            last_epoch + 1,
            steps,
        )
    best = checkpoint.get("best")
    rng = _rng_for_this_rank(checkpoint.get("rng"), source, seed + last_epoch + 1)
    return Restored(last_epoch, dict(best) if best else None, rng)


def _planned_epochs(checkpoint: Mapping[str, Any], default: int) -> int:
    """The ``epochs`` of the run that wrote ``checkpoint`` (``default`` when it stores none)."""
    config = checkpoint.get("config")
    return int(config.get("epochs", default)) if isinstance(config, Mapping) else default


def _rng_for_this_rank(saved: Any, source: str, reseed: int) -> dict[str, Any] | None:
    if not saved:
        return None
    if len(saved) != dist.get_world_size():
        logger.warning(
            "%s: saved by %d processes, resumed with %d; random streams are reseeded "
            "(data order and augmentation differ from an uninterrupted run)",
            source,
            len(saved),
            dist.get_world_size(),
        )
        dist.seed_everything(reseed)
        return None
    state: dict[str, Any] = saved[dist.get_rank()]
    return state
