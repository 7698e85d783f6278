"""One classification training epoch, one top-k evaluation pass, and the cross-rank averaging
of BatchNorm statistics (the loss and postprocessor are :mod:`rtdetr_spartan.nn.criterion` and
:mod:`rtdetr_spartan.nn.postprocessor`).

Follows the design of SpaRTAN (henry-pay/SpaRTAN, Apache-2.0): top-1/top-5 accuracy reduced
across ranks, BatchNorm running statistics averaged across ranks after every epoch.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as tdist
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader

from rtdetr_spartan.misc import dist
from rtdetr_spartan.misc.meters import MetricLogger
from rtdetr_spartan.optim.ema import ModelEMA
from rtdetr_spartan.solver.steps import (
    autocast,
    backward_and_step,
    check_finite_loss,
    fault_point,
    log_iteration,
    progress,
)

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

__all__ = [
    "all_reduce_batchnorm_stats",
    "evaluate",
    "train_one_epoch",
]

logger = logging.getLogger(__name__)


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    data_loader: DataLoader[Any],
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    epoch: int,
    *,
    lr_scheduler: LRScheduler | None = None,
    clip_max_norm: float = 0.0,
    ema: ModelEMA | None = None,
    scaler: torch.amp.GradScaler | None = None,
    amp_dtype: torch.dtype | None = None,
    print_freq: int = 50,
    writer: SummaryWriter | None = None,
) -> dict[str, float]:
    """One pass over ``data_loader`` of ``(images [B, 3, H, W], targets [B, C] or [B])``.

    ``lr_scheduler``, when given, is stepped after every optimizer step (per-iteration
    schedules); per-epoch schedulers are stepped by the caller. Returns the rank-averaged mean
    ``loss`` and the last ``lr``.
    """
    model.train()
    meters = MetricLogger()
    total = len(data_loader)
    bar = progress(data_loader, total, f"epoch {epoch}")
    for iteration, (images, targets) in enumerate(bar):
        fault_point(epoch, iteration)
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with autocast(device, amp_dtype):
            logits = model(images)
        loss = criterion(logits, targets)
        loss_value = check_finite_loss(dist.reduce_dict({"loss": loss}), {"loss": loss}, epoch, iteration)
        lr = optimizer.param_groups[0]["lr"]  # the lr this step uses
        backward_and_step(loss, model, optimizer, scaler, clip_max_norm)
        if ema is not None:
            ema.update(model)
        if lr_scheduler is not None:
            lr_scheduler.step()
        meters.update(loss=loss_value, lr=lr)
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")
        if print_freq > 0 and (iteration % print_freq == 0 or iteration == total - 1):
            log_iteration(epoch, iteration, total, loss_value, lr, writer, loss_tag="Loss/train")
    meters.synchronize_between_processes()
    stats = meters.global_averages()
    stats["lr"] = meters.meters["lr"].value if "lr" in meters.meters else math.nan
    return stats


def _topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int]) -> list[torch.Tensor]:
    """Number of rows whose label is among the top ``k`` logits, for each ``k`` (capped at C)."""
    top = logits.topk(min(max(ks), logits.shape[-1]), dim=-1).indices
    hits = top == labels[:, None]
    return [hits[:, :k].any(dim=-1).sum() for k in ks]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data_loader: DataLoader[Any],
    device: torch.device,
    *,
    amp_dtype: torch.dtype | None = None,
    topk: Sequence[int] = (1, 5),
) -> dict[str, float]:
    """Top-k accuracy (in %) and mean cross-entropy over the whole validation set.

    Batches are ``(images [B, 3, H, W], labels [B] int64)``; each rank evaluates its shard and
    the counts are summed over ranks, so the result is exact and equal on every rank.
    Returns ``{"top1": ..., "top5": ..., "loss": ..., "num_images": ...}``.
    """
    model.eval()
    sums = torch.zeros(2 + len(topk), dtype=torch.float64, device=device)  # images, loss, hits...
    total = len(data_loader)
    for images, labels in progress(data_loader, total, "eval"):
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with autocast(device, amp_dtype):
            logits = model(images)
        logits = logits.float()
        sums[0] += labels.numel()
        sums[1] += F.cross_entropy(logits, labels, reduction="sum").double()
        sums[2:] += torch.stack(_topk_correct(logits, labels, topk)).double()
    if dist.is_dist_initialized():
        tdist.all_reduce(sums)
    count = max(1.0, float(sums[0]))
    result = {f"top{k}": 100.0 * float(sums[2 + i]) / count for i, k in enumerate(topk)}
    result.update(loss=float(sums[1]) / count, num_images=int(sums[0]))
    return result


@torch.no_grad()
def all_reduce_batchnorm_stats(module: nn.Module) -> int:
    """Average the running mean/var of every BatchNorm layer of ``module`` over all ranks.

    Each rank's BatchNorm statistics drift apart (different data, no SyncBatchNorm on the CPU);
    averaging them after an epoch makes every rank evaluate and save the same model. Returns the
    number of tensors averaged (0 in one process).
    """
    if dist.get_world_size() < 2:
        return 0
    tensors = [
        buf
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        for buf in (m.running_mean, m.running_var)
        if buf is not None
    ]
    if not tensors:
        return 0
    flat = torch.cat([t.reshape(-1).float() for t in tensors])
    tdist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()
    return len(tensors)
