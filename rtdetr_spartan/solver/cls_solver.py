"""Classification solver (ImageNet-style pretraining): the task's part of :meth:`BaseSolver.fit`
(a training epoch, BatchNorm statistics averaged over ranks, top-k evaluation) and
:meth:`ClsSolver.val`.

Follows the design of SpaRTAN (henry-pay/SpaRTAN, Apache-2.0): AdamW with the learning rate
scaled to the total batch (``base_lr_batch``), warm-up + cosine schedule stepped per iteration,
BatchNorm statistics averaged across ranks after each epoch, top-1 selects ``best.pth``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from rtdetr_spartan.core import YAMLConfig
from rtdetr_spartan.solver.base import BaseSolver
from rtdetr_spartan.solver.cls_engine import all_reduce_batchnorm_stats, evaluate, train_one_epoch
from rtdetr_spartan.solver.state import EvalState, TrainState

if TYPE_CHECKING:
    pass

__all__ = ["ClsSolver"]

logger = logging.getLogger(__name__)


class ClsSolver(BaseSolver):
    """Trains a classifier for ``epochs`` epochs, evaluating top-1/top-5 after each one."""

    metric_name = "top1"
    train_epoch = staticmethod(train_one_epoch)

    def __init__(self, cfg: YAMLConfig) -> None:
        super().__init__(cfg)
        if cfg.get("cam_logging"):
            # imported here: visualization needs grad-cam and matplotlib, which training without it does not
            from rtdetr_spartan.visualize.cam_logger import CamLoggingHook

            hook = CamLoggingHook.from_config(cfg)
            if hook is not None:
                self.register_hook(hook)

    def evaluate(self, state: EvalState) -> dict[str, Any]:
        """Top-k accuracy (%) and loss of the EMA (or plain) model on the validation set, on every rank."""
        return dict(evaluate(state.eval_module, state.val_loader, self.device, amp_dtype=self.amp_dtype))

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
        all_reduce_batchnorm_stats(state.module)
        if state.ema is not None:
            all_reduce_batchnorm_stats(state.ema.module)
