"""Pieces every training loop shares: the rank-0 progress bar, autocast and the optimizer step."""

from __future__ import annotations

import contextlib
from typing import Any, ContextManager, Iterable

import torch
from torch import nn
from tqdm import tqdm

from rtdetr_spartan.misc import dist

__all__ = ["autocast", "backward_and_step", "progress"]


def progress(iterable: Iterable[Any], total: int, desc: str) -> Iterable[Any]:
    """A tqdm bar (with ETA) on rank 0; the plain iterable elsewhere."""
    return tqdm(iterable, total=total, desc=desc, disable=not dist.is_main_process(), dynamic_ncols=True, leave=False)


def autocast(device: torch.device, amp_dtype: torch.dtype | None) -> ContextManager[Any]:
    """``torch.autocast`` to ``amp_dtype`` on ``device``; a no-op context when it is None."""
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=amp_dtype)


def backward_and_step(
    loss: torch.Tensor,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    clip_max_norm: float,
) -> None:
    """Backward pass, optional gradient-norm clipping (of the unscaled gradients when a
    ``scaler`` is used) and one optimizer step."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        if clip_max_norm > 0:
            nn.utils.clip_grad_norm_(model.parameters(), clip_max_norm)
        optimizer.step()
        return
    scaler.scale(loss).backward()
    if clip_max_norm > 0:
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        nn.utils.clip_grad_norm_(model.parameters(), clip_max_norm)
    scaler.step(optimizer)
    scaler.update()
