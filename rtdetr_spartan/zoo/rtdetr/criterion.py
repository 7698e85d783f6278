# Follows the design of RT-DETR (lyuwenyu/RT-DETR, Apache-2.0), itself after DETR's SetCriterion.
"""RT-DETR training losses: Hungarian-matched classification and box losses on the final
decoder layer, every auxiliary output (earlier layers and the encoder top-k) and the denoising
queries, each weighted by ``weight_dict``."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from rtdetr_spartan.core import register
from rtdetr_spartan.zoo.rtdetr.box_ops import (
    box_cxcywh_to_xyxy,
    paired_box_iou,
    paired_generalized_box_iou,
)
from rtdetr_spartan.zoo.rtdetr.matcher import MatchIndices

__all__ = ["SetCriterion"]

Targets = Sequence[Mapping[str, torch.Tensor]]
LossFn = Callable[[Mapping[str, torch.Tensor], Targets, MatchIndices, float], dict[str, torch.Tensor]]


def _source_index(indices: MatchIndices) -> tuple[torch.Tensor, torch.Tensor]:
    """(image index, query index) of every matched query, for advanced indexing."""
    batch_index = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
    query_index = torch.cat([src for src, _ in indices])
    return batch_index, query_index


def _matched_labels(targets: Targets, indices: MatchIndices) -> torch.Tensor:
    return torch.cat([t["labels"][tgt] for t, (_, tgt) in zip(targets, indices)])


def _matched_boxes(
    outputs: Mapping[str, torch.Tensor], targets: Targets, indices: MatchIndices
) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted, target) boxes of the matched pairs: [M, 4] cxcywh each."""
    predicted = outputs["pred_boxes"][_source_index(indices)]
    target = torch.cat([t["boxes"][tgt] for t, (_, tgt) in zip(targets, indices)], dim=0)
    return predicted, target.to(predicted.dtype)


def _num_boxes(targets: Targets, device: torch.device) -> float:
    """Target boxes per rank, averaged over the process group when one is running; at least 1."""
    count = torch.as_tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(count)
        count = count / dist.get_world_size()
    return torch.clamp(count, min=1).item()


@register()
class SetCriterion(nn.Module):
    """Weighted set-prediction losses.

    ``losses`` picks from ``vfl`` (varifocal, IoU-aware), ``focal``, ``labels`` (softmax
    cross-entropy with a ``eos_coef`` no-object weight) and ``boxes`` (L1 + GIoU). Only the loss
    keys present in ``weight_dict`` are returned, multiplied by their weight; auxiliary outputs
    get the suffix ``_aux_{i}`` and denoising outputs ``_dn_{i}`` (e.g. ``loss_giou_dn_2``).
    """

    __share__ = ["num_classes"]
    __inject__ = ["matcher"]

    empty_weight: torch.Tensor  # buffer: class weights of the softmax loss

    def __init__(
        self,
        matcher: nn.Module,
        weight_dict: Mapping[str, float],
        losses: Sequence[str],
        alpha: float = 0.2,
        gamma: float = 2.0,
        eos_coef: float = 1e-4,
        num_classes: int = 80,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = dict(weight_dict)
        self.losses = tuple(losses)
        self.alpha = alpha
        self.gamma = gamma
        unknown = [name for name in self.losses if name not in self._loss_functions()]
        if unknown:
            raise ValueError(f"SetCriterion: unknown losses {unknown}; valid: {sorted(self._loss_functions())}")
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight)

    def _loss_functions(self) -> dict[str, LossFn]:
        return {
            "vfl": self.loss_labels_vfl,
            "focal": self.loss_labels_focal,
            "labels": self.loss_labels,
            "boxes": self.loss_boxes,
        }

    def _target_classes(self, logits: torch.Tensor, targets: Targets, indices: MatchIndices) -> torch.Tensor:
        """[B, Q] int64: the matched target's label, num_classes (background) elsewhere."""
        classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        classes[_source_index(indices)] = _matched_labels(targets, indices).to(torch.int64)
        return classes

    def _one_hot(self, classes: torch.Tensor) -> torch.Tensor:
        """[B, Q] -> [B, Q, num_classes] int64, all zero for background."""
        return F.one_hot(classes, num_classes=self.num_classes + 1)[..., :-1]

    def loss_labels(
        self, outputs: Mapping[str, torch.Tensor], targets: Targets, indices: MatchIndices, num_boxes: float
    ) -> dict[str, torch.Tensor]:
        """Softmax cross-entropy; pred_logits must have num_classes + 1 columns (no-object last)."""
        logits = outputs["pred_logits"]
        classes = self._target_classes(logits, targets, indices)
        return {"loss_ce": F.cross_entropy(logits.transpose(1, 2), classes, self.empty_weight)}

    def loss_labels_focal(
        self, outputs: Mapping[str, torch.Tensor], targets: Targets, indices: MatchIndices, num_boxes: float
    ) -> dict[str, torch.Tensor]:
        logits = outputs["pred_logits"]
        target = self._one_hot(self._target_classes(logits, targets, indices)).to(logits.dtype)
        loss = sigmoid_focal_loss(logits, target, self.alpha, self.gamma, reduction="none")
        return {"loss_focal": loss.mean(1).sum() * logits.shape[1] / num_boxes}

    def loss_labels_vfl(
        self, outputs: Mapping[str, torch.Tensor], targets: Targets, indices: MatchIndices, num_boxes: float
    ) -> dict[str, torch.Tensor]:
        """Varifocal loss: matched queries learn their box IoU as the class score; unmatched
        ones are pushed to 0 with weight alpha * p**gamma."""
        predicted, target_boxes = _matched_boxes(outputs, targets, indices)
        ious = paired_box_iou(box_cxcywh_to_xyxy(predicted), box_cxcywh_to_xyxy(target_boxes)).detach()

        logits = outputs["pred_logits"]
        target = self._one_hot(self._target_classes(logits, targets, indices))
        score = torch.zeros(logits.shape[:2], dtype=logits.dtype, device=logits.device)
        score[_source_index(indices)] = ious.to(score.dtype)
        target_score = score.unsqueeze(-1) * target

        weight = self.alpha * F.sigmoid(logits).detach().pow(self.gamma) * (1 - target) + target_score
        loss = F.binary_cross_entropy_with_logits(logits, target_score, weight=weight, reduction="none")
        return {"loss_vfl": loss.mean(1).sum() * logits.shape[1] / num_boxes}

    def loss_boxes(
        self, outputs: Mapping[str, torch.Tensor], targets: Targets, indices: MatchIndices, num_boxes: float
    ) -> dict[str, torch.Tensor]:
        """L1 on cxcywh and 1 - GIoU, summed over matched pairs / num_boxes."""
        predicted, target_boxes = _matched_boxes(outputs, targets, indices)
        loss_bbox = F.l1_loss(predicted, target_boxes, reduction="none").sum() / num_boxes
        giou = paired_generalized_box_iou(box_cxcywh_to_xyxy(predicted), box_cxcywh_to_xyxy(target_boxes))
        return {"loss_bbox": loss_bbox, "loss_giou": (1 - giou).sum() / num_boxes}

    def _weighted_losses(
        self,
        outputs: Mapping[str, torch.Tensor],
        targets: Targets,
        indices: MatchIndices,
        num_boxes: float,
        suffix: str = "",
    ) -> dict[str, torch.Tensor]:
        functions = self._loss_functions()
        weighted: dict[str, torch.Tensor] = {}
        for name in self.losses:
            for key, value in functions[name](outputs, targets, indices, num_boxes).items():
                if key in self.weight_dict:
                    weighted[key + suffix] = value * self.weight_dict[key]
        return weighted

    @staticmethod
    def denoising_match_indices(dn_meta: Mapping[str, Any], targets: Targets) -> MatchIndices:
        """Per image, each positive denoising query paired with the box it was made from."""
        positive, num_groups = dn_meta["dn_positive_idx"], dn_meta["dn_num_group"]
        matches = []
        for image, target in enumerate(targets):
            device = target["labels"].device
            target_index = torch.arange(len(target["labels"]), dtype=torch.int64, device=device)
            target_index = target_index.tile(num_groups)
            query_index = positive[image].to(device=device, dtype=torch.int64)
            if len(query_index) != len(target_index):
                raise ValueError(
                    f"dn_meta of image {image} has {len(query_index)} positive queries, "
                    f"expected {len(target_index)} ({num_groups} groups)"
                )
            matches.append((query_index, target_index))
        return matches

    def forward(self, outputs: Mapping[str, Any], targets: Targets) -> dict[str, torch.Tensor]:
        """Compute the weighted losses.

        Args:
            outputs: ``pred_logits`` [B, Q, classes], ``pred_boxes`` [B, Q, 4] cxcywh normalized,
                optionally ``aux_outputs`` and ``dn_aux_outputs`` (lists of such dicts) and
                ``dn_meta`` (from the decoder).
            targets: per image ``labels`` [n] int64 and ``boxes`` [n, 4] cxcywh normalized.

        Returns:
            weighted losses by key (``loss_vfl``, ``loss_bbox_aux_0``, ``loss_giou_dn_2``, ...).
        """
        final = {k: v for k, v in outputs.items() if "aux" not in k}
        num_boxes = _num_boxes(targets, outputs["pred_logits"].device)
        losses = self._weighted_losses(final, targets, self.matcher(final, targets), num_boxes)

        for i, aux in enumerate(outputs.get("aux_outputs", ())):
            indices = self.matcher(aux, targets)
            losses.update(self._weighted_losses(aux, targets, indices, num_boxes, f"_aux_{i}"))

        if "dn_aux_outputs" in outputs:
            if "dn_meta" not in outputs:
                raise KeyError("outputs have 'dn_aux_outputs' but no 'dn_meta'")
            dn_meta = outputs["dn_meta"]
            indices = self.denoising_match_indices(dn_meta, targets)
            dn_num_boxes = num_boxes * dn_meta["dn_num_group"]
            for i, aux in enumerate(outputs["dn_aux_outputs"]):
                losses.update(self._weighted_losses(aux, targets, indices, dn_num_boxes, f"_dn_{i}"))
        return losses
