"""Log CAMs of a few fixed validation images to TensorBoard every N epochs of pretraining.

A training run attaches it with the ``CamLoggingHook`` hook (:mod:`rtdetr_spartan.solver.hooks`,
``hooks: [CamLoggingHook]`` and a ``CamLoggingHook:`` section holding :meth:`CamLogger.from_config`'s
settings), which
calls ``logger(model, writer, epoch)`` after each epoch's evaluation; it does nothing on other
epochs, and leaves the model's train/eval mode and gradients as they were.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from rtdetr_spartan.data.image_io import read_rgb
from rtdetr_spartan.visualize.cam import METHODS
from rtdetr_spartan.visualize.layers import classifier_layers

__all__ = ["CONFIG_KEY", "CamLogger"]

logger = logging.getLogger(__name__)

CONFIG_KEY = "CamLoggingHook"  # the config section named in error messages


class CamLogger:
    """CAM figures of ``images`` (preprocessed by ``transform``, default the ImageNet evaluation
    transform; pass the config's, ``visualize.run.classifier_transform(cfg)``) written to a TensorBoard writer
    as ``cam/<folder>/<image name>`` every ``every_n_epochs`` epochs (0: never)."""

    def __init__(
        self,
        images: Sequence[str | Path],
        every_n_epochs: int,
        layers: Sequence[str] = (),
        transform: Callable[[Image.Image], torch.Tensor] | None = None,
        method: str = "gradcam",
        class_names: Sequence[str] = (),
    ) -> None:
        if every_n_epochs < 0:
            raise ValueError(f"{CONFIG_KEY}.every_n_epochs must be >= 0, got {every_n_epochs}")
        if method not in METHODS:
            raise ValueError(f"{CONFIG_KEY}.method must be one of {sorted(METHODS)}, got {method!r}")
        self.images = [Path(p) for p in images]
        missing = [str(p) for p in self.images if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{CONFIG_KEY}.images: {missing} do not exist")
        self.every_n_epochs = every_n_epochs
        if transform is None:
            from rtdetr_spartan.data.classification import ClassificationEvalTransforms

            transform = ClassificationEvalTransforms()
        self.transform = transform
        self.layers = tuple(layers)
        self.method = method
        self.class_names = tuple(class_names)

    def due(self, epoch: int) -> bool:
        return self.every_n_epochs > 0 and bool(self.images) and (epoch + 1) % self.every_n_epochs == 0

    def __call__(self, model: nn.Module, writer: Any, epoch: int) -> dict[str, np.ndarray]:
        """Write this epoch's figures (when due) with ``writer.add_image``; returns them by tag."""
        if not self.due(epoch):
            return {}
        from rtdetr_spartan.visualize.run import classifier_figure

        model = getattr(model, "module", model)  # DistributedDataParallel
        was_training = model.training
        figures = {}
        try:
            layers = self.layers or classifier_layers(model)
            for path in self.images:
                figure = classifier_figure(
                    model, read_rgb(path), self.transform, layers, self.method, None, self.class_names
                )
                tag = f"cam/{path.parent.name}/{path.stem}"  # ImageFolder stems repeat across classes
                writer.add_image(tag, figure, global_step=epoch, dataformats="HWC")
                figures[tag] = figure
        finally:
            model.train(was_training)
            model.zero_grad(set_to_none=True)
        logger.info("epoch %d: CAMs of %d images logged", epoch, len(figures))
        return figures

    @classmethod
    def from_config(
        cls, settings: Mapping[str, Any] | None, transform: Callable[[Image.Image], torch.Tensor]
    ) -> CamLogger | None:
        """The logger the ``CamLoggingHook`` section asks for (``every_n_epochs``, ``images``,
        ``max_images``, ``layers``, ``method``, ``class_names``), or None when it is absent or off."""
        if not settings or not int(settings.get("every_n_epochs", 0)):
            return None
        unknown = set(settings) - {"every_n_epochs", "images", "max_images", "layers", "method", "class_names"}
        if unknown:
            raise ValueError(f"{CONFIG_KEY}: unknown keys {sorted(unknown)}")
        images = [Path(p) for p in settings.get("images") or []]
        if len(images) == 1 and images[0].is_dir():
            images = _spread(images[0], int(settings.get("max_images", 4)))
        return cls(
            images,
            int(settings["every_n_epochs"]),
            tuple(settings.get("layers") or ()),
            transform,
            str(settings.get("method", "gradcam")),
            tuple(settings.get("class_names") or ()),
        )


def _spread(folder: Path, count: int) -> list[Path]:
    """``count`` images of ``folder`` (searched recursively, e.g. an ImageFolder split), evenly
    spaced in sorted order so that they span its class folders."""
    from rtdetr_spartan.deploy.infer import IMAGE_SUFFIXES

    found = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise FileNotFoundError(f"{CONFIG_KEY}.images: no images in {folder}")
    picks = np.linspace(0, len(found) - 1, num=min(count, len(found))).round().astype(int)
    return [found[i] for i in sorted(set(picks.tolist()))]
