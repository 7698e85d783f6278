"""Optimizers, schedulers, EMA and parameter groups; torch's own classes are registered so that
configs name them (``type: AdamW``, ``type: MultiStepLR``, ``type: GradScaler``)."""

from __future__ import annotations

import torch

from rtdetr_spartan.core import register
from rtdetr_spartan.optim.ema import ModelEMA, unwrap_model
from rtdetr_spartan.optim.no_decay import no_weight_decay_groups
from rtdetr_spartan.optim.param_groups import param_groups_from_config, scaled_lr
from rtdetr_spartan.optim.warmup_cosine import WarmupCosineLR

for _optimizer in (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW):
    register(_optimizer)
for _scheduler in (
    torch.optim.lr_scheduler.MultiStepLR,
    torch.optim.lr_scheduler.StepLR,
    torch.optim.lr_scheduler.CosineAnnealingLR,
    torch.optim.lr_scheduler.OneCycleLR,
    torch.optim.lr_scheduler.LinearLR,
    torch.optim.lr_scheduler.LambdaLR,
):
    register(_scheduler)
register(torch.amp.GradScaler)

__all__ = [
    "ModelEMA",
    "WarmupCosineLR",
    "no_weight_decay_groups",
    "param_groups_from_config",
    "scaled_lr",
    "unwrap_model",
]
