"""Classification solver (ImageNet-style pretraining): the task's part of :meth:`BaseSolver.fit`
(the training step, BatchNorm statistics averaged over ranks, top-k evaluation) and
:meth:`ClsSolver.val`.

Follows the design of SpaRTAN (henry-pay/SpaRTAN, Apache-2.0): AdamW with the learning rate
scaled to the total batch (``base_lr_batch``), warm-up + cosine schedule stepped per iteration,
BatchNorm statistics averaged across ranks after each epoch, top-1 selects ``best.pth``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.distributed as tdist
import torch.nn.functional as F
from torch import nn

from rtdetr_spartan.misc import dist
from rtdetr_spartan.solver.base import BaseSolver
from rtdetr_spartan.solver.loop import TrainStep, predict_batches
from rtdetr_spartan.solver.state import EvalState, TrainState

__all__ = ["ClsSolver", "topk_evaluate"]

logger = logging.getLogger(__name__)


def _topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int]) -> list[torch.Tensor]:
    """Number of rows whose label is among the top ``k`` logits, for each ``k`` (capped at C)."""
    top = logits.topk(min(max(ks), logits.shape[-1]), dim=-1).indices
    hits = top == labels[:, None]
    return [hits[:, :k].any(dim=-1).sum() for k in ks]


def topk_evaluate(
    model: nn.Module,
    data_loader: Iterable[Any],
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
    sums = torch.zeros(2 + len(topk), dtype=torch.float64, device=device)  # images, loss, hits...
    for (_, labels), logits in predict_batches(model, data_loader, lambda batch: model(batch[0]), device, amp_dtype):
        logits = logits.float()
        sums[0] += labels.numel()
        sums[1] += F.cross_entropy(logits, labels, reduction="sum").double()
        sums[2:] += torch.stack(_topk_correct(logits, labels, topk)).double()
    if dist.is_dist_initialized():
        sums = sums.to(dist.collective_device())
        tdist.all_reduce(sums)
    count = max(1.0, float(sums[0]))
    result = {f"top{k}": 100.0 * float(sums[2 + i]) / count for i, k in enumerate(topk)}
    result.update(loss=float(sums[1]) / count, num_images=int(sums[0]))
    return result


class ClsSolver(BaseSolver):
    """Trains a classifier for ``epochs`` epochs, evaluating top-1/top-5 after each one
    (under the training autocast dtype when AMP is on)."""

    metric_name = "top1"

    def train_step(self, state: TrainState) -> TrainStep:
        """``(images [B, 3, H, W], targets [B] labels or [B, C] soft targets)`` -> ``{"loss"}``."""
        return TrainStep(
            forward=lambda batch: state.model(batch[0]),
            losses=lambda logits, batch: {"loss": state.criterion(logits, batch[1])},
        )

    def evaluate(self, state: EvalState) -> dict[str, Any]:
        """Top-k accuracy (%) and loss of the EMA (or plain) model on the validation set, on every rank."""
        return dict(topk_evaluate(state.eval_module, state.val_loader, self.device, amp_dtype=self.amp_dtype))

    def metric(self, eval_stats: Mapping[str, Any]) -> float:
        return float(eval_stats["top1"])

    def describe(self, eval_stats: Mapping[str, Any]) -> str:
        return (
            f"top-1 {eval_stats['top1']:.2f}%  top-5 {eval_stats['top5']:.2f}%  loss {eval_stats['loss']:.4f}"
            f"  ({eval_stats['num_images']} images)"
        )

    def epoch_scalars(self, eval_stats: Mapping[str, Any]) -> dict[str, float]:
        return {key: float(eval_stats[key]) for key in ("top1", "top5", "loss")}

    def val(self) -> dict[str, Any]:
        """Evaluate only (``--test-only``); the result is also a ``log.txt`` line."""
        stats = super().val()
        self.append_log(self.epoch_record(stats))
        return stats

    def after_train_epoch(self, state: TrainState) -> None:
        """Average BatchNorm statistics over ranks, so every rank evaluates and saves one model."""
        dist.all_reduce_batchnorm_stats(state.module)
        if state.ema is not None:
            dist.all_reduce_batchnorm_stats(state.ema.module)
