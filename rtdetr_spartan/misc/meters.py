# Follows the design of RT-DETR (lyuwenyu/RT-DETR, Apache-2.0).
"""Running averages of training statistics, reduced across ranks at the end of an epoch."""

from __future__ import annotations

import math
from collections import deque
from typing import Mapping

import torch
import torch.distributed as tdist

from rtdetr_spartan.misc.dist import collective_device, get_world_size

__all__ = ["MetricLogger", "SmoothedValue"]


class SmoothedValue:
    """A value tracked over a sliding window (``median``, ``avg``) and over the whole run
    (``global_avg``, after :meth:`synchronize` the average over every rank)."""

    def __init__(self, window_size: int = 20, fmt: str = "{median:.4f} ({global_avg:.4f})") -> None:
        if window_size < 1:
            raise ValueError(f"window_size must be >= 1, got {window_size}")
        self.window: deque[float] = deque(maxlen=window_size)
        self.total = 0.0
        self.count = 0
        self.fmt = fmt

    def update(self, value: float, n: int = 1) -> None:
        self.window.append(float(value))
        self.count += n
        self.total += float(value) * n

    def synchronize(self) -> None:
        """Sum ``count`` and ``total`` over every rank (the window stays local)."""
        if get_world_size() < 2:
            return
        packed = torch.tensor([float(self.count), self.total], dtype=torch.float64, device=collective_device())
        tdist.all_reduce(packed)
        self.count = int(packed[0].item())
        self.total = float(packed[1].item())

    @property
    def median(self) -> float:
        return float(torch.tensor(list(self.window)).median().item()) if self.window else math.nan

    @property
    def avg(self) -> float:
        return sum(self.window) / len(self.window) if self.window else math.nan

    @property
    def global_avg(self) -> float:
        return self.total / self.count if self.count else math.nan

    @property
    def max(self) -> float:
        return max(self.window) if self.window else math.nan

    @property
    def value(self) -> float:
        return self.window[-1] if self.window else math.nan

    def __str__(self) -> str:
        return self.fmt.format(
            median=self.median, avg=self.avg, global_avg=self.global_avg, max=self.max, value=self.value
        )


class MetricLogger:
    """Named :class:`SmoothedValue` meters, created on first update."""

    def __init__(self, window_size: int = 20, delimiter: str = "  ") -> None:
        self.meters: dict[str, SmoothedValue] = {}
        self.window_size = window_size
        self.delimiter = delimiter

    def add_meter(self, name: str, meter: SmoothedValue) -> None:
        self.meters[name] = meter

    def update(
        self, values: Mapping[str, float | torch.Tensor] | None = None, n: int = 1, **named: float | torch.Tensor
    ) -> None:
        """Add one observation per name (tensors must hold one number)."""
        for name, value in {**(values or {}), **named}.items():
            number = value.item() if isinstance(value, torch.Tensor) else float(value)
            if name not in self.meters:
                self.meters[name] = SmoothedValue(self.window_size)
            self.meters[name].update(number, n)

    def synchronize_between_processes(self) -> None:
        """Reduce every meter's totals over the ranks; all ranks must hold the same names."""
        for name in sorted(self.meters):
            self.meters[name].synchronize()

    def global_averages(self) -> dict[str, float]:
        return {name: meter.global_avg for name, meter in self.meters.items()}

    def latest(self) -> dict[str, float]:
        return {name: meter.value for name, meter in self.meters.items()}

    def __str__(self) -> str:
        return self.delimiter.join(f"{name}: {meter}" for name, meter in self.meters.items())
