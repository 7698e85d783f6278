# Follows the design of RT-DETR (lyuwenyu/RT-DETR, Apache-2.0).
"""Detection solver: the task's part of :meth:`BaseSolver.fit` (a training epoch, the COCO
evaluation and its AP) and :meth:`DetSolver.val`."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from rtdetr_spartan.core import ConfigError
from rtdetr_spartan.data.coco_eval import STAT_NAMES, CocoEvaluator
from rtdetr_spartan.solver.base import BaseSolver
from rtdetr_spartan.solver.det_engine import evaluate, train_one_epoch
from rtdetr_spartan.solver.state import EvalState

if TYPE_CHECKING:
    pass

__all__ = ["DetSolver"]

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


class DetSolver(BaseSolver):
    """Trains a detector for ``epochs`` epochs, evaluating COCO box AP after each one.

    The learning-rate scheduler steps once per epoch (as RT-DETR v1) unless it declares
    ``step_per: iteration``; evaluation uses the EMA weights when EMA is on; ``best.pth``
    follows the validation AP (IoU .50:.95).
    """

    metric_name = "AP"
    train_epoch = staticmethod(train_one_epoch)

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
        """COCO evaluation of the EMA (or plain) model; rank 0 writes ``eval/``. Returns the
        summary written to ``eval/summary.json`` (``stats``: the 12 COCOeval numbers)."""
        return evaluate(
            state.eval_module,
            state.postprocessor,
            state.val_loader,
            self._make_evaluator(state),
            self.device,
            label_to_category=prediction_categories(state),
            output_dir=self.output_dir,
        )

    def metric(self, eval_stats: Mapping[str, Any]) -> float:
        return float(eval_stats["stats"][0])

    def describe(self, eval_stats: Mapping[str, Any]) -> str:
        return f"AP {eval_stats['stats'][0]:.4f} AP50 {eval_stats['stats'][1]:.4f}"

    def epoch_record(self, eval_stats: Mapping[str, Any]) -> dict[str, Any]:
        return {"test_coco_eval_bbox": list(eval_stats["stats"])}

    def epoch_scalars(self, eval_stats: Mapping[str, Any]) -> dict[str, float]:
        return {key: float(value) for key, value in zip(STAT_NAMES, eval_stats["stats"])}
