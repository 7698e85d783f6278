# Follows the design of RT-DETR (lyuwenyu/RT-DETR, Apache-2.0).
"""Detection solver: the task's part of :meth:`BaseSolver.fit` (the training step, the COCO
evaluation and its AP) and :meth:`DetSolver.val`."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from rtdetr_spartan.core import ConfigError
from rtdetr_spartan.data.coco_eval import STAT_NAMES, CocoEvaluator, to_category_ids
from rtdetr_spartan.misc import dist
from rtdetr_spartan.solver.base import BaseSolver
from rtdetr_spartan.solver.loop import TrainStep, predict_batches
from rtdetr_spartan.solver.state import EvalState, TrainState

__all__ = ["DetSolver", "check_finite_outputs", "coco_evaluate", "coco_metrics", "prediction_categories"]

logger = logging.getLogger(__name__)


def _dataset_attr(dataset: Any, name: str) -> Any:
    """``dataset.<name>``, looking through wrappers such as ``torch.utils.data.Subset``."""
    current = dataset
    while current is not None:
        if hasattr(current, name):
            return getattr(current, name)
        current = getattr(current, "dataset", None)
    raise AttributeError(
        f"validation dataset {type(dataset).__name__} has no '{name}' "
        "(detection evaluation needs a COCO-style dataset such as CocoDetection)"
    )


def prediction_categories(state: EvalState) -> dict[int, int] | None:
    """The dataset category id of each label the model predicts, for COCO scoring; None when
    the postprocessor maps to COCO ids itself (``remap_mscoco_category``).

    In training, the training dataset's mapping: the model learned its labels, and a validation
    file that lists a subset of the categories would map them to other ids. Without a training
    loader (``--test-only``), the validation dataset's."""
    if getattr(state.postprocessor, "remap_mscoco_category", False):
        return None
    train_loader = getattr(state, "train_loader", None)
    if train_loader is not None:
        try:
            return dict(_dataset_attr(train_loader.dataset, "label_to_category"))
        except AttributeError:
            pass  # a training dataset without a COCO mapping: the validation one decides
    return dict(_dataset_attr(state.val_loader.dataset, "label_to_category"))


def check_finite_outputs(outputs: Mapping[str, Any]) -> None:
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
            f"non-finite model outputs ({where}); the weights have diverged, so no loss can be computed"
        )


def _predict(model: nn.Module, postprocessor: nn.Module, batch: Any) -> list[dict[str, torch.Tensor]]:
    """Per image of ``(images [B, 3, H, W], targets)``: XYXY pixel boxes of the original image,
    scores and contiguous labels."""
    images, targets = batch
    orig_sizes = torch.stack([t["orig_size"] for t in targets], dim=0)
    results: list[dict[str, torch.Tensor]] = postprocessor(model(images), orig_sizes)
    return results


@torch.no_grad()
def coco_evaluate(
    model: nn.Module,
    postprocessor: nn.Module,
    data_loader: DataLoader[Any],
    evaluator: CocoEvaluator,
    device: torch.device,
    *,
    label_to_category: Mapping[int, int] | None = None,
    output_dir: str | Path | None = None,
) -> dict[str, Any]:
    """COCO box evaluation of ``model`` over ``data_loader`` (each rank its shard), in float32
    as RT-DETR's reference.

    Returns the summary ``{"stats": 12 COCOeval numbers, "stat_names", "per_class":
    [{category_id, name, ap, ap50}], "num_images"}`` on every rank. ``label_to_category`` maps
    the predicted labels to category ids (unless the postprocessor remaps them itself). With
    ``output_dir``, rank 0 writes ``eval/results.json`` (COCO results: category ids, XYWH pixels
    of the original image) and ``eval/summary.json`` (the summary).
    """
    postprocessor.eval()
    remapped = getattr(postprocessor, "remap_mscoco_category", False)
    if not remapped and label_to_category is None:
        raise ValueError(
            "the dataset has no label_to_category and the postprocessor does not remap "
            "labels; category ids of the predictions are unknown"
        )
    for (_, targets), results in predict_batches(
        model, data_loader, lambda batch: _predict(model, postprocessor, batch), device
    ):
        predictions = {int(t["image_id"].item()): r for t, r in zip(targets, results)}
        evaluator.update(predictions if remapped else to_category_ids(predictions, label_to_category or {}))
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
        eval_dir = Path(output_dir) / "eval"
        evaluator.write_results(eval_dir / "results.json")
        (eval_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        logger.info("wrote %s and %s", eval_dir / "results.json", eval_dir / "summary.json")
    return summary


def coco_metrics(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The metrics of a :func:`coco_evaluate` summary: the 12 COCO statistics by name
    (``AP``, ``AP50``, ... ``AR_large``), ``per_class`` and ``num_images``."""
    return {
        **{name: float(value) for name, value in zip(STAT_NAMES, summary["stats"])},
        "per_class": list(summary.get("per_class", [])),
        "num_images": int(summary.get("num_images", 0)),
    }


class DetSolver(BaseSolver):
    """Trains a detector for ``epochs`` epochs, evaluating COCO box AP after each one.

    The learning-rate scheduler steps once per epoch (as RT-DETR v1) unless it declares
    ``step_per: iteration``; evaluation uses the EMA weights when EMA is on; ``best.pth``
    follows the validation AP (IoU .50:.95).
    """

    metric_name = "AP"

    def train_step(self, state: TrainState) -> TrainStep:
        """``(images [B, 3, H, W], targets)`` with target ``boxes`` cxcywh normalized and
        ``labels`` contiguous -> the criterion's weighted terms (main, auxiliary, denoising)."""

        def losses(outputs: Any, batch: Any) -> Mapping[str, torch.Tensor]:
            check_finite_outputs(outputs)
            terms: Mapping[str, torch.Tensor] = state.criterion(outputs, batch[1])
            return terms

        return TrainStep(forward=lambda batch: state.model(*batch), losses=losses)

    def _make_evaluator(self, state: EvalState) -> CocoEvaluator:
        spec = dict(self.cfg.get("evaluator") or {})
        name = spec.pop("type", "CocoEvaluator")
        if name != "CocoEvaluator":
            raise ConfigError(f"evaluator.type: detection evaluates with CocoEvaluator, got {name!r}")
        coco_gt = _dataset_attr(state.val_loader.dataset, "coco")
        try:
            return CocoEvaluator(coco_gt, **spec)
        except TypeError as err:
            raise ConfigError(f"evaluator: {err}") from err

    def evaluate(self, state: EvalState) -> dict[str, Any]:
        """COCO evaluation of the EMA (or plain) model; rank 0 writes ``eval/``. Returns
        :func:`coco_metrics` (the 12 statistics by name, ``per_class``, ``num_images``)."""
        if state.postprocessor is None:
            raise ConfigError(f"{self.cfg.path}: detection needs a 'postprocessor' (e.g. RTDETRPostProcessor)")
        summary = coco_evaluate(
            state.eval_module,
            state.postprocessor,
            state.val_loader,
            self._make_evaluator(state),
            self.device,
            label_to_category=prediction_categories(state),
            output_dir=self.output_dir,
        )
        return coco_metrics(summary)

    def metric(self, eval_stats: Mapping[str, Any]) -> float:
        return float(eval_stats["AP"])

    def describe(self, eval_stats: Mapping[str, Any]) -> str:
        return f"AP {eval_stats['AP']:.4f} AP50 {eval_stats['AP50']:.4f}"

    def epoch_record(self, eval_stats: Mapping[str, Any]) -> dict[str, Any]:
        return {"test_coco_eval_bbox": [eval_stats[name] for name in STAT_NAMES]}

    def epoch_scalars(self, eval_stats: Mapping[str, Any]) -> dict[str, float]:
        return {name: float(eval_stats[name]) for name in STAT_NAMES}
