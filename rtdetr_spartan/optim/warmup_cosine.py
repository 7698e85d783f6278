"""Linear warm-up followed by cosine annealing, composed from torch's own schedulers.

Follows the design of SpaRTAN (henry-pay/SpaRTAN, Apache-2.0), whose ImageNet recipe warms the
learning rate up linearly from ``warmup_lr`` to the base lr over ``warmup_epochs``, then anneals
it with a cosine to ``min_lr`` at ``epochs``. For epoch ``e`` (fractional when stepping per
iteration), with ``W = warmup_epochs`` and ``E = epochs``::

    e <  W:  lr = warmup_lr + (base_lr - warmup_lr) * e / W
    e >= W:  lr = min_lr + (base_lr - min_lr) * (1 + cos(pi * (e - W) / (E - W))) / 2

The reference (timm's CosineLRScheduler without warm-up prefix) runs its cosine over all ``E``
epochs and lets the warm-up overwrite the first ``W``; here the cosine starts where the warm-up
ends, so the base lr is actually reached. That is the composition torch offers
(``SequentialLR([LinearLR, CosineAnnealingLR])``); for the paper's 20/300 split the two curves
differ by at most 6.3 % of the base lr (around epoch 113).

``step_per: iteration`` (default) steps once per optimizer step for a smooth warm-up, which
matters for large batches and short runs; ``step_per: epoch`` steps once per epoch as the
reference does. Either way the schedule is defined in epochs.

A warm-up as long as the run or longer (``-u epochs=1`` on a 20-warm-up-epoch recipe, to try
something) is clamped to ``epochs - 1`` with one warning, as timm does, so the cosine stage keeps
at least one epoch.
"""

from __future__ import annotations

import logging
import math

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

from rtdetr_spartan.core import register

__all__ = ["WarmupCosineLR", "warmup_cosine_lr"]

logger = logging.getLogger(__name__)

STEP_UNITS = ("iteration", "epoch")


def _effective_warmup(warmup_epochs: int, epochs: int) -> int:
    """``warmup_epochs``, clamped to ``epochs - 1`` when the run is not longer than it."""
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1 for lr_scheduler WarmupCosineLR, got {epochs}")
    if warmup_epochs < 0:
        raise ValueError(f"lr_scheduler.warmup_epochs must be >= 0, got {warmup_epochs}")
    return min(warmup_epochs, epochs - 1)


def warmup_cosine_lr(
    epoch: float, base_lr: float, epochs: int, warmup_epochs: int, warmup_lr: float, min_lr: float
) -> float:
    """The learning rate of the schedule at (possibly fractional) ``epoch``; the closed form
    that :class:`WarmupCosineLR` follows, for tests and plots."""
    warmup_lr = min(warmup_lr, base_lr)  # a warm-up never goes down (LinearLR factors are <= 1)
    warmup_epochs = _effective_warmup(warmup_epochs, epochs)
    if epoch < warmup_epochs:
        return warmup_lr + (base_lr - warmup_lr) * epoch / warmup_epochs
    progress = min(1.0, (epoch - warmup_epochs) / max(1, epochs - warmup_epochs))
    return min_lr + (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress)) / 2.0


@register()
class WarmupCosineLR(SequentialLR):
    """``SequentialLR(LinearLR warm-up, CosineAnnealingLR)`` over ``epochs`` (top-level key).

    ``iters_per_epoch`` is supplied by the solver when ``step_per`` is ``'iteration'``; the
    warm-up start factor is ``warmup_lr`` over each group's lr, so build this after any lr scaling.
    """

    __share__ = ["epochs"]

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        epochs: int,
        warmup_epochs: int = 0,
        warmup_lr: float = 1e-4,
        min_lr: float = 1e-6,
        step_per: str = "iteration",
        iters_per_epoch: int = 1,
    ) -> None:
        if step_per not in STEP_UNITS:
            raise ValueError(f"lr_scheduler.step_per must be one of {STEP_UNITS}, got {step_per!r}")
        clamped = _effective_warmup(warmup_epochs, epochs)
        if clamped != warmup_epochs:
            logger.warning(
                "lr_scheduler.warmup_epochs=%d is not shorter than the run (epochs=%d): warming up for %d "
                "epochs instead, so the cosine stage keeps one epoch",
                warmup_epochs,
                epochs,
                clamped,
            )
            warmup_epochs = clamped
        self.step_per = step_per
        unit = iters_per_epoch if step_per == "iteration" else 1
        if unit < 1:
            raise ValueError(f"lr_scheduler.iters_per_epoch must be >= 1, got {iters_per_epoch}")
        warm = warmup_epochs * unit
        base = float(optimizer.param_groups[0]["lr"])
        # LinearLR scales every group by one factor, at most 1: with a base lr below warmup_lr
        # (a small batch after lr scaling) the warm-up stage holds the base lr.
        start = min(1.0, warmup_lr / base) if base > 0 else 1.0
        cosine = CosineAnnealingLR(optimizer, T_max=(epochs - warmup_epochs) * unit, eta_min=min_lr)
        if warm == 0:
            super().__init__(optimizer, schedulers=[cosine], milestones=[])
            return
        linear = LinearLR(optimizer, start_factor=start, end_factor=1.0, total_iters=warm)
        super().__init__(optimizer, schedulers=[linear, cosine], milestones=[warm])
