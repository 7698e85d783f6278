"""Classification losses that configs name (``criterion: SoftTargetCrossEntropy``).

Follows the design of SpaRTAN (henry-pay/SpaRTAN, Apache-2.0): soft-target cross-entropy on
MixUp/CutMix targets. The detection criterion is RT-DETR's ``SetCriterion`` (``zoo.rtdetr``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rtdetr_spartan.core import register

__all__ = ["SoftTargetCrossEntropy"]


@register()
class SoftTargetCrossEntropy(nn.Module):
    """Cross-entropy against probability rows (MixUp/CutMix) or class indices."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"SoftTargetCrossEntropy.label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``logits``: ``[B, C]``; ``targets``: ``[B, C]`` float rows summing to 1, or ``[B]`` int64.

        Returns the batch mean, a float32 scalar even when the logits are half precision.
        """
        return F.cross_entropy(logits.float(), targets, label_smoothing=self.label_smoothing)
