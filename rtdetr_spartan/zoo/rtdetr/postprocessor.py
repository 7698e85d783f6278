# Follows the design of RT-DETR (lyuwenyu/RT-DETR, Apache-2.0).
"""Turn decoder outputs into per-image detections in pixels."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from rtdetr_spartan.core import register
from rtdetr_spartan.data.categories import MSCOCO_CATEGORIES, label_to_category_table
from rtdetr_spartan.zoo.rtdetr.box_ops import box_cxcywh_to_xyxy

__all__ = ["RTDETRPostProcessor"]

Detections = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _gather_boxes(boxes: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """boxes [B, Q, 4], index [B, K] -> [B, K, 4]."""
    return boxes.gather(1, index.unsqueeze(-1).expand(-1, -1, boxes.shape[-1]))


@register()
class RTDETRPostProcessor(nn.Module):
    """Top-k detections per image, boxes as xyxy pixels of the original image.

    With ``use_focal_loss`` (sigmoid scores) the top ``num_top_queries`` (query, class) pairs are
    kept, so a query may appear with several classes; otherwise each query keeps its best
    softmax class (the last logit is no-object) and the top queries are kept.
    """

    __share__ = ["num_classes", "use_focal_loss", "remap_mscoco_category"]

    category_ids: torch.Tensor  # buffer: contiguous label -> COCO category id

    def __init__(
        self,
        num_classes: int = 80,
        use_focal_loss: bool = True,
        num_top_queries: int = 300,
        remap_mscoco_category: bool = False,
    ) -> None:
        super().__init__()
        if remap_mscoco_category and num_classes != len(MSCOCO_CATEGORIES):
            raise ValueError(f"remap_mscoco_category needs num_classes={len(MSCOCO_CATEGORIES)}, got {num_classes}")
        self.num_classes = num_classes
        self.use_focal_loss = use_focal_loss
        self.num_top_queries = num_top_queries
        self.remap_mscoco_category = remap_mscoco_category
        self.deploy_mode = False
        self.register_buffer("category_ids", label_to_category_table(), persistent=False)

    def extra_repr(self) -> str:
        return (
            f"use_focal_loss={self.use_focal_loss}, num_classes={self.num_classes}, "
            f"num_top_queries={self.num_top_queries}"
        )

    def _top_focal(self, logits: torch.Tensor, boxes: torch.Tensor) -> Detections:
        scores, index = torch.topk(F.sigmoid(logits).flatten(1), self.num_top_queries, dim=-1)
        labels = index % self.num_classes
        queries = torch.div(index, self.num_classes, rounding_mode="floor")
        return labels, _gather_boxes(boxes, queries), scores

    def _top_softmax(self, logits: torch.Tensor, boxes: torch.Tensor) -> Detections:
        scores, labels = F.softmax(logits, dim=-1)[:, :, :-1].max(dim=-1)
        if scores.shape[1] > self.num_top_queries:
            scores, index = torch.topk(scores, self.num_top_queries, dim=-1)
            labels = labels.gather(1, index)
            boxes = _gather_boxes(boxes, index)
        return labels, boxes, scores

    def forward(
        self, outputs: Mapping[str, torch.Tensor], orig_target_sizes: torch.Tensor
    ) -> list[dict[str, torch.Tensor]] | Detections:
        """Select detections.

        Args:
            outputs: ``pred_logits`` [B, Q, classes] and ``pred_boxes`` [B, Q, 4] cxcywh normalized.
            orig_target_sizes: [B, 2] as (width, height) of the original images.

        Returns:
            per image dict(labels [K] int64, boxes [K, 4] xyxy pixels, scores [K]), K =
            num_top_queries (labels are COCO category ids with ``remap_mscoco_category``);
            in deploy mode the batched tuple (labels [B, K], boxes [B, K, 4], scores [B, K])
            with contiguous labels.
        """
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        scale = orig_target_sizes.to(boxes.dtype).repeat(1, 2).unsqueeze(1)
        pixel_boxes = box_cxcywh_to_xyxy(boxes) * scale
        select = self._top_focal if self.use_focal_loss else self._top_softmax
        labels, boxes, scores = select(logits, pixel_boxes)
        if self.deploy_mode:
            return labels, boxes, scores
        if self.remap_mscoco_category:
            labels = self.category_ids.to(labels.device)[labels]
        return [{"labels": lab, "boxes": box, "scores": sco} for lab, box, sco in zip(labels, boxes, scores)]

    def deploy(self) -> RTDETRPostProcessor:
        """Switch to the export form: eval mode, batched tuple output."""
        self.eval()
        self.deploy_mode = True
        return self

    @property
    def iou_types(self) -> tuple[str, ...]:
        return ("bbox",)
