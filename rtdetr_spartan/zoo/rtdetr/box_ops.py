# Follows the design of RT-DETR (lyuwenyu/RT-DETR, Apache-2.0).
"""Box helpers used by the decoder, matcher, criterion and postprocessor.

Everything delegates to ``torchvision.ops``. For float32 inputs torchvision evaluates exactly the
same elementwise expressions as the reference's DETR-style helpers (``cx -/+ 0.5 w``,
``(x0 + x1) / 2``, intersection / union, enclosing-box penalty), so the results are bit-identical;
for float16/bfloat16 torchvision upcasts areas to float32, which only makes them more accurate.
"""

from __future__ import annotations

import torch
from torchvision.ops import box_convert, box_iou, generalized_box_iou

__all__ = [
    "box_cxcywh_to_xyxy",
    "box_xyxy_to_cxcywh",
    "box_iou",
    "generalized_box_iou",
    "paired_box_iou",
    "paired_generalized_box_iou",
]


def box_cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """[..., 4] (cx, cy, w, h) -> [..., 4] (x0, y0, x1, y1), same units."""
    return box_convert(boxes, in_fmt="cxcywh", out_fmt="xyxy")


def box_xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """[..., 4] (x0, y0, x1, y1) -> [..., 4] (cx, cy, w, h), same units."""
    return box_convert(boxes, in_fmt="xyxy", out_fmt="cxcywh")


def paired_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """IoU of corresponding rows: [N, 4] xyxy, [N, 4] xyxy -> [N].

    The diagonal of the pairwise matrix, as the reference takes it (same values).
    """
    return torch.diagonal(box_iou(boxes1, boxes2))


def paired_generalized_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Generalized IoU of corresponding rows: [N, 4] xyxy, [N, 4] xyxy -> [N].

    The diagonal of the pairwise matrix, as the reference takes it (same values).
    ``torchvision.ops.generalized_box_iou_loss`` is not used because it adds an epsilon to
    the denominators, which would change the loss values.
    """
    return torch.diagonal(generalized_box_iou(boxes1, boxes2))
