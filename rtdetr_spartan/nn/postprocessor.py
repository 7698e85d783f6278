"""The classification postprocessor that configs name (``postprocessor: ClassificationPostProcessor``);
the detection one is RT-DETR's ``RTDETRPostProcessor`` (``zoo.rtdetr``)."""

from __future__ import annotations

import torch
from torch import nn

from rtdetr_spartan.core import register

__all__ = ["ClassificationPostProcessor"]


@register()
class ClassificationPostProcessor(nn.Module):
    """Top-k classes of each image, best first (``k = min(topk, C)``)."""

    def __init__(self, topk: int = 5) -> None:
        super().__init__()
        if topk < 1:
            raise ValueError(f"ClassificationPostProcessor.topk must be >= 1, got {topk}")
        self.topk = topk

    def forward(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """``logits [B, C]`` -> ``{"labels": [B, k] int64, "scores": [B, k] softmax probabilities}``."""
        scores, labels = logits.float().softmax(-1).topk(min(self.topk, logits.shape[-1]), dim=-1)
        return {"labels": labels, "scores": scores}
