"""Hooks that configs list under ``hooks:`` (registered names, built with their section).

``CamLoggingHook`` logs class activation maps of a few fixed images to TensorBoard during
pretraining::

    hooks: [CamLoggingHook]
    CamLoggingHook:
      every_n_epochs: 5     # after every N-th epoch (epochs N-1, 2N-1, ... counted from 0); 0: off
      images: [data/val]    # image files, or one folder (max_images of its images, spread out)
      max_images: 4
      layers: ~             # default: the classifier's last stage
      method: gradcam       # gradcam | gradcam++ | eigencam
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rtdetr_spartan.core import register
from rtdetr_spartan.solver.state import EpochResult, SolverHook, TrainState

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

    from rtdetr_spartan.solver.base import BaseSolver

__all__ = ["CamLoggingHook"]

logger = logging.getLogger(__name__)


@register
class CamLoggingHook(SolverHook):
    """After every ``every_n_epochs``-th epoch, rank 0 writes the CAM figures of the evaluated
    weights (EMA when on) to TensorBoard as ``cam/<folder>/<image name>``
    (:class:`rtdetr_spartan.visualize.cam_logger.CamLogger`); images are preprocessed with the
    config's validation transform. Off (``every_n_epochs: 0``) it loads nothing."""

    def __init__(
        self,
        every_n_epochs: int = 0,
        images: Sequence[str] = (),
        max_images: int = 4,
        layers: Sequence[str] | None = None,
        method: str = "gradcam",
        class_names: Sequence[str] = (),
    ) -> None:
        if every_n_epochs < 0:
            raise ValueError(f"CamLoggingHook.every_n_epochs must be >= 0, got {every_n_epochs}")
        self.settings: dict[str, Any] = {
            "every_n_epochs": every_n_epochs,
            "images": list(images),
            "max_images": max_images,
            "layers": list(layers or ()),
            "method": method,
            "class_names": list(class_names),
        }
        self.cam_logger: Any = None

    def before_train(self, solver: BaseSolver, state: TrainState) -> None:
        """Check the images and layers' settings and build the logger (before the first epoch)."""
        if not self.settings["every_n_epochs"]:
            return
        # Visualization loads grad-cam, OpenCV and matplotlib: only runs that log CAMs pay for them.
        from rtdetr_spartan.visualize.cam_logger import CamLogger
        from rtdetr_spartan.visualize.run import classifier_transform

        self.cam_logger = CamLogger.from_config(self.settings, classifier_transform(solver.cfg))

    def after_epoch(
        self, solver: BaseSolver, state: TrainState, result: EpochResult, writer: SummaryWriter | None
    ) -> None:
        if writer is not None and self.cam_logger is not None:  # rank 0 only; the figures need no collective
            self.cam_logger(state.eval_module, writer, result.epoch)
