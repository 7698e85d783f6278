# Follows the design of RT-DETR (lyuwenyu/RT-DETR, Apache-2.0).
"""One detection training epoch and one COCO evaluation pass."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader

from rtdetr_spartan.data.coco_eval import STAT_NAMES, CocoEvaluator, to_category_ids
from rtdetr_spartan.misc import dist
from rtdetr_spartan.misc.meters import MetricLogger, SmoothedValue
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

__all__ = ["check_finite_outputs", "evaluate", "train_one_epoch"]

logger = logging.getLogger(__name__)

Targets = list[dict[str, Any]]


def _targets_to(targets: Sequence[Mapping[str, Any]], device: torch.device) -> Targets:
    return [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in t.items()} for t in targets]


def _float32(value: Any) -> Any:
    """Floating tensors in a (nested) model output as float32, so losses are computed in fp32."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, Mapping):
        return {k: _float32(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_float32(v) for v in value)
    return value


def check_finite_outputs(outputs: Mapping[str, Any], epoch: int, iteration: int) -> None:
    """Raise :class:`FloatingPointError` on every rank when any rank's predictions are not finite
    (the matcher could not even compute the loss)."""
    bad = [
        k
        for k in ("pred_logits", "pred_boxes")
        if isinstance(outputs.get(k), torch.Tensor) and not bool(torch.isfinite(outputs[k]).all())
    ]
    if dist.any_rank(bool(bad)):
        where = f"rank {dist.get_rank()}: {', '.join(bad)}" if bad else f"another rank than {dist.get_rank()}"
        raise FloatingPointError(
            f"non-finite model outputs at epoch {epoch}, iteration {iteration} "
            f"({where}); the weights have diverged, so no loss can be computed"
        )


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
    """Train ``model`` for one pass over ``data_loader``; returns rank-averaged mean losses and lr.

    Batches are ``(images [B, 3, H, W], targets)`` with target ``boxes`` cxcywh normalized and
    ``labels`` contiguous. With ``amp_dtype`` the forward pass runs under autocast and the
    criterion in float32. A non-finite loss raises :class:`FloatingPointError`. ``lr_scheduler``,
    when given, is stepped after every optimizer step (per-iteration schedules).
    """
    model.train()
    criterion.train()
    meters = MetricLogger()
    meters.add_meter("lr", SmoothedValue(window_size=1, fmt="{value:.3e}"))
    total = len(data_loader)
    bar = progress(data_loader, total, f"epoch {epoch}")
    for iteration, (images, targets) in enumerate(bar):
        fault_point(epoch, iteration)
        images, targets = images.to(device), _targets_to(targets, device)
        with autocast(device, amp_dtype):
            outputs = model(images, targets)
        check_finite_outputs(outputs, epoch, iteration)
        loss_dict = criterion(_float32(outputs) if amp_dtype is not None else outputs, targets)
        # Reduce before backward: every rank sees the same totals, so all stop together on NaN.
        reduced = dist.reduce_dict(loss_dict)
        loss_value = check_finite_loss(reduced, loss_dict, epoch, iteration)
        backward_and_step(sum(loss_dict.values()), model, optimizer, scaler, clip_max_norm)
        lr = optimizer.param_groups[0]["lr"]  # the lr this step used
        if ema is not None:
            ema.update(model)
        if lr_scheduler is not None:
            lr_scheduler.step()
        meters.update(reduced, loss=loss_value, lr=lr)
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")
        if print_freq > 0 and (iteration % print_freq == 0 or iteration == total - 1):
            log_iteration(epoch, iteration, total, loss_value, lr, writer, loss_tag="Loss/total")
    meters.synchronize_between_processes()
    logger.info("epoch %d averaged: %s", epoch, meters)
    return meters.global_averages()


def _predictions(
    outputs: Mapping[str, Any], targets: Targets, postprocessor: nn.Module, label_to_category: Mapping[int, int] | None
) -> dict[int, dict[str, torch.Tensor]]:
    """Per image id: XYXY pixel boxes of the original image, scores, category ids."""
    orig_sizes = torch.stack([t["orig_size"] for t in targets], dim=0)
    results = postprocessor(outputs, orig_sizes)
    predictions = {int(t["image_id"].item()): r for t, r in zip(targets, results)}
    if getattr(postprocessor, "remap_mscoco_category", False):
        return predictions  # the postprocessor already returns COCO category ids
    if label_to_category is None:
        raise ValueError(
            "the dataset has no label_to_category and the postprocessor does not remap "
            "labels; category ids of the predictions are unknown"
        )
    return to_category_ids(predictions, label_to_category)


def _write_eval_files(evaluator: CocoEvaluator, summary: Mapping[str, Any], eval_dir: Path) -> None:
    evaluator.write_results(eval_dir / "results.json")
    (eval_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    logger.info("wrote %s and %s", eval_dir / "results.json", eval_dir / "summary.json")


@torch.no_grad()
def evaluate(
    model: nn.Module,
    postprocessor: nn.Module,
    data_loader: DataLoader[Any],
    evaluator: CocoEvaluator,
    device: torch.device,
    *,
    label_to_category: Mapping[int, int] | None = None,
    output_dir: str | Path | None = None,
) -> dict[str, Any]:
    """COCO box evaluation of ``model`` over ``data_loader`` (each rank its shard).

    Returns ``{"stats": 12 COCOeval numbers, "stat_names", "per_class": [{category_id, name, ap,
    ap50}], "num_images"}`` on every rank. With ``output_dir``, rank 0 writes
    ``eval/results.json`` (COCO results: category ids, XYWH pixels of the original image) and
    ``eval/summary.json``.
    """
    model.eval()
    postprocessor.eval()
    total = len(data_loader)
    for images, targets in progress(data_loader, total, "eval"):
        images, targets = images.to(device), _targets_to(targets, device)
        outputs = model(images)
        evaluator.update(_predictions(outputs, targets, postprocessor, label_to_category))
    evaluator.synchronize_between_processes()
    evaluator.accumulate()
    stats = evaluator.summarize()
    logger.info("per-class AP:\n%s", evaluator.format_per_class_table())
    summary = {
        "stats": stats,
        "stat_names": list(STAT_NAMES),
        "per_class": evaluator.per_class(),
        "num_images": len(evaluator.img_ids),
    }
    if output_dir is not None and dist.is_main_process():
        _write_eval_files(evaluator, summary, Path(output_dir) / "eval")
    return summary
