# Follows the design of RT-DETR (lyuwenyu/RT-DETR, Apache-2.0), itself after DETR's matcher.
"""Hungarian matching between predicted queries and ground-truth boxes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from rtdetr_spartan.core import register
from rtdetr_spartan.zoo.rtdetr.box_ops import box_cxcywh_to_xyxy, generalized_box_iou

__all__ = ["HungarianMatcher", "MatchIndices"]

# Per image: (query indices, target indices), both int64 [min(Q, n)].
MatchIndices = list[tuple[torch.Tensor, torch.Tensor]]

_COST_KEYS = ("cost_class", "cost_bbox", "cost_giou")


@register()
class HungarianMatcher(nn.Module):
    """One-to-one assignment minimizing class + L1 + GIoU cost, per image.

    ``weight_dict`` holds ``cost_class``, ``cost_bbox`` and ``cost_giou``. With
    ``use_focal_loss`` the class cost is the focal-loss difference between labelling the query
    positive and negative for the target class; otherwise it is minus the softmax probability.
    """

    __share__ = ["use_focal_loss"]

    def __init__(
        self, weight_dict: Mapping[str, float], use_focal_loss: bool = False, alpha: float = 0.25, gamma: float = 2.0
    ) -> None:
        super().__init__()
        missing = [key for key in _COST_KEYS if key not in weight_dict]
        if missing:
            raise ValueError(
                f"HungarianMatcher weight_dict lacks {missing}; it needs {list(_COST_KEYS)}, got {dict(weight_dict)}"
            )
        self.cost_class = float(weight_dict["cost_class"])
        self.cost_bbox = float(weight_dict["cost_bbox"])
        self.cost_giou = float(weight_dict["cost_giou"])
        if self.cost_class == 0 and self.cost_bbox == 0 and self.cost_giou == 0:
            raise ValueError("HungarianMatcher: cost_class, cost_bbox and cost_giou cannot all be 0")
        self.use_focal_loss = use_focal_loss
        self.alpha = alpha
        self.gamma = gamma

    def _class_cost(self, logits: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
        """logits [N, classes], target_ids [T] -> [N, T]."""
        if not self.use_focal_loss:
            return -logits.softmax(-1)[:, target_ids]
        prob = F.sigmoid(logits)[:, target_ids]
        negative = (1 - self.alpha) * (prob**self.gamma) * (-(1 - prob + 1e-8).log())
        positive = self.alpha * ((1 - prob) ** self.gamma) * (-(prob + 1e-8).log())
        return positive - negative

    def cost_matrix(
        self, outputs: Mapping[str, torch.Tensor], targets: Sequence[Mapping[str, torch.Tensor]]
    ) -> torch.Tensor:
        """Cost of every query against every target of the batch: [B, Q, sum(n_i)]."""
        batch, queries = outputs["pred_logits"].shape[:2]
        # float32 throughout, so half-precision outputs (AMP) give the same assignment.
        logits = outputs["pred_logits"].flatten(0, 1).float()
        boxes = outputs["pred_boxes"].flatten(0, 1).float()
        target_ids = torch.cat([t["labels"] for t in targets])
        target_boxes = torch.cat([t["boxes"] for t in targets]).float()

        cost_bbox = torch.cdist(boxes, target_boxes, p=1)
        cost_giou = -generalized_box_iou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(target_boxes))
        cost = (
            self.cost_bbox * cost_bbox
            + self.cost_class * self._class_cost(logits, target_ids)
            + self.cost_giou * cost_giou
        )
        return cost.view(batch, queries, -1)

    @torch.no_grad()
    def forward(
        self, outputs: Mapping[str, torch.Tensor], targets: Sequence[Mapping[str, torch.Tensor]]
    ) -> MatchIndices:
        """Match queries to targets.

        Args:
            outputs: ``pred_logits`` [B, Q, classes] and ``pred_boxes`` [B, Q, 4] cxcywh normalized.
            targets: per image ``labels`` [n_i] and ``boxes`` [n_i, 4] cxcywh normalized.

        Returns:
            per image (query indices, target indices), int64 on the outputs' device, sorted by
            query index, each of length min(Q, n_i).
        """
        device = outputs["pred_logits"].device
        sizes = [len(t["boxes"]) for t in targets]
        if sum(sizes) == 0:
            empty = torch.zeros(0, dtype=torch.int64, device=device)
            return [(empty, empty.clone()) for _ in sizes]
        per_image = self.cost_matrix(outputs, targets).cpu().split(sizes, -1)
        matches = []
        for index, cost in enumerate(per_image):
            rows, cols = linear_sum_assignment(cost[index].numpy())
            matches.append(
                (
                    torch.as_tensor(rows, dtype=torch.int64, device=device),
                    torch.as_tensor(cols, dtype=torch.int64, device=device),
                )
            )
        return matches
