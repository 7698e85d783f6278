"""Exponential moving average of model weights with RT-DETR's warm-up ramp.

Follows RT-DETR's ``ModelEMA`` (lyuwenyu/RT-DETR, Apache-2.0): after ``n`` updates the decay is
``decay * (1 - exp(-n / warmups))``, so early averages follow the model closely.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch

from rtdetr_spartan.core import register


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DistributedDataParallel/DataParallel wrapper (or ``model`` itself)."""
    return (
        model.module if isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)) else model
    )


@register()
class ModelEMA:
    """EMA copy of a model; floating-point parameters and buffers are averaged."""

    def __init__(self, model: torch.nn.Module, decay: float = 0.9999, warmups: int = 2000) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema.decay must be in (0, 1), got {decay}")
        self.module = copy.deepcopy(unwrap_model(model)).eval()
        self.decay = decay
        self.warmups = warmups
        self.updates = 0
        for param in self.module.parameters():
            param.requires_grad_(False)

    def current_decay(self) -> float:
        if self.warmups <= 0:
            return self.decay
        return self.decay * (1.0 - math.exp(-self.updates / self.warmups))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = self.current_decay()
        source = unwrap_model(model).state_dict()
        for key, value in self.module.state_dict().items():
            if value.dtype.is_floating_point:
                value.mul_(d).add_(source[key].detach(), alpha=1.0 - d)
            else:
                value.copy_(source[key])

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates, "warmups": self.warmups}

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:
        self.module.load_state_dict(state["module"], strict=strict)
        self.updates = int(state.get("updates", 0))
        self.warmups = int(state.get("warmups", self.warmups))
