"""The one optimizer construction path for every task: parameter groups from ``optimizer.params``
(regex groups or a registered group function), the fused implementation unless the config
chooses one, the lr scaled to the total batch (``base_lr_batch``), and the scheduler (given
``iters_per_epoch`` when it takes it)."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader

from rtdetr_spartan.core import ConfigError, YAMLConfig, lookup
from rtdetr_spartan.misc import dist
from rtdetr_spartan.optim import param_groups_from_config, scaled_lr

__all__ = ["build_optimizer", "build_scheduler", "fused_default"]

logger = logging.getLogger(__name__)


def build_optimizer(cfg: YAMLConfig, module: nn.Module, train_loader: DataLoader[Any]) -> torch.optim.Optimizer:
    """The one optimizer path: parameter groups from ``optimizer.params``, then the lr scaled
    to the total batch when ``base_lr_batch`` is set."""
    groups = param_groups_from_config(cfg.get("optimizer") or {}, module, cfg.yaml_cfg)
    logger.info(
        "optimizer parameter groups: %s",
        ", ".join(f"{len(g['params'])} tensors (weight_decay {g.get('weight_decay', 'default')})" for g in groups),
    )
    optimizer: torch.optim.Optimizer = cfg.build("optimizer", params=groups, **fused_default(cfg, groups))
    base_lr_batch = cfg.get("base_lr_batch")
    if base_lr_batch is not None:
        batch = int(train_loader.batch_size or 1)
        total = batch * dist.get_world_size()
        base = float(optimizer.defaults["lr"])
        lr = scaled_lr(base, total, base_lr_batch)
        for group in optimizer.param_groups:
            group["lr"] *= lr / base if base else 1.0
        optimizer.defaults["lr"] = lr
        logger.info(
            "lr %.6g = base lr %.6g x total batch %d (%d x %d processes) / base_lr_batch %s",
            lr,
            base,
            total,
            batch,
            dist.get_world_size(),
            base_lr_batch,
        )
    return optimizer


def fused_default(cfg: YAMLConfig, groups: list[dict[str, Any]]) -> dict[str, bool]:
    """``{'fused': True}`` when the optimizer takes ``fused`` (torch's Adam, AdamW, SGD), the
    config sets neither ``fused`` nor ``foreach``, and every parameter is a floating-point CPU or
    CUDA tensor; else ``{}``.

    torch's default is one loop over the parameter tensors on the CPU (``foreach`` on CUDA); the
    fused kernel updates them in one call per group. AdamW's step for RT-DETR-SpaRTAN-T (1,072
    tensors) took 141 ms looped and 67 ms fused on 2 CPU cores, RT-DETR-R18's 88 and 33 ms.
    """
    spec = cfg.get("optimizer")
    if not isinstance(spec, Mapping) or "fused" in spec or "foreach" in spec:
        return {}
    try:
        target = lookup(str(spec.get("type")))
    except KeyError:
        return {}  # cfg.build reports the unknown name
    if "fused" not in inspect.signature(target).parameters:
        return {}
    params = [p for group in groups for p in group["params"]]
    if not params or any(p.device.type not in ("cpu", "cuda") or not p.is_floating_point() for p in params):
        return {}
    return {"fused": True}


def build_scheduler(
    cfg: YAMLConfig, optimizer: torch.optim.Optimizer, train_loader: DataLoader[Any]
) -> LRScheduler | None:
    """``lr_scheduler`` (built after any lr scaling); ``iters_per_epoch`` is supplied to a
    scheduler that takes it."""
    spec = cfg.get("lr_scheduler")
    if not spec:
        return None
    name = spec if isinstance(spec, str) else spec.get("type") if isinstance(spec, Mapping) else None
    try:
        target = lookup(str(name))
    except KeyError as err:
        raise ConfigError(f"{cfg.path}: lr_scheduler: {err.args[0]}") from None
    extra: dict[str, Any] = {"optimizer": optimizer}
    if "iters_per_epoch" in inspect.signature(target).parameters:
        extra["iters_per_epoch"] = len(train_loader)
    scheduler: LRScheduler = cfg.build("lr_scheduler", **extra)
    return scheduler
