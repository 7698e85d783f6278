"""The pieces of the epoch loop (:mod:`rtdetr_spartan.solver.loop`): the rank-0 progress bar,
autocast, the finite-loss check, the per-iteration log line, the optimizer step, and a test-only
fault point for the elastic-restart test."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, ContextManager

import torch
from torch import nn
from tqdm import tqdm

from rtdetr_spartan.misc import dist

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

__all__ = [
    "FAULT_ENV",
    "FAULT_EXIT_CODE",
    "LOSS_TAG",
    "LR_TAG",
    "autocast",
    "backward_and_step",
    "check_finite_loss",
    "fault_point",
    "log_iteration",
    "progress",
]

logger = logging.getLogger(__name__)

# Test-only: "RANK:EPOCH:ITERATION" makes that rank exit abruptly (os._exit(FAULT_EXIT_CODE))
# before that training iteration, on torchrun's first attempt only (TORCHELASTIC_RESTART_COUNT 0),
# as a preempted node would.
FAULT_ENV = "RTDETR_SPARTAN_TEST_EXIT_AT"
FAULT_EXIT_CODE = 75

# The per-iteration TensorBoard tags of every task (RT-DETR's names).
LOSS_TAG = "Loss/total"
LR_TAG = "Lr/pg_0"


def progress(iterable: Iterable[Any], total: int, desc: str) -> Iterable[Any]:
    """A tqdm bar (with ETA) on rank 0; the plain iterable elsewhere."""
    return tqdm(iterable, total=total, desc=desc, disable=not dist.is_main_process(), dynamic_ncols=True, leave=False)


def autocast(device: torch.device, amp_dtype: torch.dtype | None) -> ContextManager[Any]:
    """``torch.autocast`` to ``amp_dtype`` on ``device``; a no-op context when it is None."""
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=amp_dtype)


def check_finite_loss(reduced: Mapping[str, torch.Tensor], local: Mapping[str, torch.Tensor]) -> float:
    """The total of the rank-averaged losses; every rank raises together when it is not finite
    (the epoch loop adds where)."""
    total = float(sum(v.item() for v in reduced.values()))
    if not math.isfinite(total):
        shown = {k: float(v.item()) for k, v in local.items()}
        raise FloatingPointError(f"non-finite loss {total}; losses of rank {dist.get_rank()}: {shown}")
    return total


def log_iteration(epoch: int, iteration: int, total: int, loss: float, lr: float, writer: SummaryWriter | None) -> None:
    """One progress line in the log and, with a writer, the loss and lr (``LOSS_TAG``, ``LR_TAG``)."""
    logger.info("epoch %d [%d/%d] loss %.4f lr %.3e", epoch, iteration + 1, total, loss, lr)
    if writer is not None:
        step = epoch * total + iteration
        writer.add_scalar(LOSS_TAG, loss, step)
        writer.add_scalar(LR_TAG, lr, step)


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


@functools.cache
def _fault_target() -> tuple[int, int, int] | None:
    spec = os.environ.get(FAULT_ENV)
    if not spec or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return None
    rank, epoch, iteration = (int(part) for part in spec.split(":"))
    return rank, epoch, iteration


def fault_point(epoch: int, iteration: int) -> None:
    """Exit this process at the iteration named by ``RTDETR_SPARTAN_TEST_EXIT_AT`` (tests only)."""
    target = _fault_target()
    if target is not None and target == (dist.get_rank(), epoch, iteration):
        # Straight to the file descriptor: no logging locks or buffers on the way out.
        os.write(2, f"{FAULT_ENV}: rank {target[0]} exits at epoch {epoch}, iteration {iteration}\n".encode())
        os._exit(FAULT_EXIT_CODE)
