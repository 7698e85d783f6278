# Follows the design of RT-DETR (lyuwenyu/RT-DETR, Apache-2.0).
"""Detection solver: one epoch of :meth:`BaseSolver.fit` (train, evaluate, checkpoint, log) and
the COCO evaluation of :meth:`DetSolver.val`."""

from __future__ import annotations

import logging
import time
from typing import Any, Mapping

from rtdetr_spartan.core import ConfigError
from rtdetr_spartan.data.coco_eval import STAT_NAMES, CocoEvaluator
from rtdetr_spartan.data.dataloader import set_epoch
from rtdetr_spartan.solver.base import BaseSolver
from rtdetr_spartan.solver.det_engine import evaluate, train_one_epoch

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


class DetSolver(BaseSolver):
    """Trains a detector for ``epochs`` epochs, evaluating COCO box AP after each one.

    The learning-rate scheduler steps once per epoch (as RT-DETR v1); evaluation uses the EMA
    weights when EMA is on; ``best.pth`` follows the validation AP (IoU .50:.95).
    """

    # ------------------------------------------------------------------------- evaluation
    def _make_evaluator(self) -> CocoEvaluator:
        spec = dict(self.cfg.get("evaluator") or {})
        name = spec.pop("type", "CocoEvaluator")
        if name != "CocoEvaluator":
            raise ConfigError(f"evaluator.type: detection evaluates with CocoEvaluator, got {name!r}")
        assert self.val_dataloader is not None
        coco_gt = _dataset_attr(self.val_dataloader.dataset, "coco")
        try:
            return CocoEvaluator(coco_gt, **spec)
        except TypeError as err:
            raise ConfigError(f"evaluator: {err}") from err

    def evaluate(self) -> dict[str, Any]:
        """Evaluate the EMA (or plain) model on the validation set; rank 0 writes ``eval/``."""
        assert self.val_dataloader is not None and self.postprocessor is not None
        label_to_category = None
        if not getattr(self.postprocessor, "remap_mscoco_category", False):
            label_to_category = _dataset_attr(self.val_dataloader.dataset, "label_to_category")
        return evaluate(
            self.eval_module,
            self.postprocessor,
            self.val_dataloader,
            self._make_evaluator(),
            self.device,
            label_to_category=label_to_category,
            output_dir=self.output_dir,
        )

    def val(self) -> dict[str, Any]:
        """Evaluate only (``--test-only``); returns the summary written to ``eval/summary.json``."""
        self.setup_eval()
        summary = self.evaluate()
        logger.info("AP %.4f AP50 %.4f", summary["stats"][0], summary["stats"][1])
        return summary

    # ------------------------------------------------------------------------- training
    def _log_epoch(
        self, epoch: int, train_stats: Mapping[str, float], summary: Mapping[str, Any], writer: Any, seconds: float
    ) -> None:
        stats = summary["stats"]
        self.append_log(
            {
                **{f"train_{k}": v for k, v in train_stats.items()},
                "test_coco_eval_bbox": stats,
                "epoch": epoch,
                "n_parameters": sum(p.numel() for p in self.module.parameters() if p.requires_grad),
                "best": self.best,
                "epoch_time_s": round(seconds, 3),
            }
        )
        logger.info(
            "epoch %d: AP %.4f AP50 %.4f (best AP %.4f at epoch %d)",
            epoch,
            stats[0],
            stats[1],
            self.best["value"],
            self.best["epoch"],
        )
        if writer is not None:
            for key, value in train_stats.items():
                writer.add_scalar(f"Train/{key}", value, epoch)
            for key, value in zip(STAT_NAMES, stats):
                writer.add_scalar(f"Test/{key}", value, epoch)
            writer.flush()

    def train_epoch(self, epoch: int, writer: Any) -> None:
        """Train one epoch, step the scheduler, evaluate, save checkpoints and log."""
        assert self.train_dataloader is not None and self.optimizer is not None
        start = time.perf_counter()
        set_epoch(self.train_dataloader, epoch)
        train_stats = train_one_epoch(
            self.model,
            self.criterion,
            self.train_dataloader,
            self.optimizer,
            self.device,
            epoch,
            clip_max_norm=self.cfg.clip_max_norm,
            ema=self.ema,
            scaler=self.scaler,
            amp_dtype=self.amp_dtype,
            print_freq=int(self.cfg.get("print_freq", 50) or 0),
            writer=writer,
        )
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()
        summary = self.evaluate()
        is_best = self.update_best("AP", float(summary["stats"][0]), epoch)
        self.last_epoch = epoch
        self.save_checkpoints(epoch, is_best)
        self._log_epoch(epoch, train_stats, summary, writer, time.perf_counter() - start)
