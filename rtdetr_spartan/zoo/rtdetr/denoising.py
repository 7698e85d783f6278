# Follows the design of RT-DETR (lyuwenyu/RT-DETR, Apache-2.0).
"""Contrastive denoising (CDN) query groups for RT-DETR training.

Each group holds, per image, a positive copy of every ground-truth box (small box noise, some
label noise) followed by a negative copy (larger box noise); images with fewer boxes are padded
with the padding class. ``G`` below is the padded number of boxes per image and ``N`` the number
of groups, so there are ``2 * G * N`` denoising queries, placed before the ``num_queries``
matching queries.

Unlike the reference, a batch in which no image has a box still yields one group of padding
queries instead of none: the denoising branch (and its class embedding) then stays in the graph,
so every rank of a distributed run backpropagates through the same parameters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from rtdetr_spartan.zoo.rtdetr.box_ops import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh
from rtdetr_spartan.zoo.rtdetr.utils import inverse_sigmoid

__all__ = ["DenoisingGroup", "build_contrastive_denoising_group", "denoising_attention_mask"]

DenoisingGroup = tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]


def _group_layout(num_gts: Sequence[int], num_denoising: int) -> tuple[int, int]:
    """(slots per image G, number of groups N); an all-empty batch gets one padding slot."""
    max_gt = max(num_gts, default=0)
    if max_gt == 0:
        return 1, 1
    return max_gt, max(num_denoising // max_gt, 1)


def _pad_targets(
    targets: Sequence[Mapping[str, torch.Tensor]], slots: int, num_classes: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Labels [B, G] int32 (padding = num_classes), boxes [B, G, 4] cxcywh, real-box mask [B, G]."""
    batch = len(targets)
    labels = torch.full((batch, slots), num_classes, dtype=torch.int32, device=device)
    boxes = torch.zeros((batch, slots, 4), device=device)
    is_real = torch.zeros((batch, slots), dtype=torch.bool, device=device)
    for index, target in enumerate(targets):
        count = len(target["labels"])
        if count > 0:
            labels[index, :count] = target["labels"]
            boxes[index, :count] = target["boxes"]
            is_real[index, :count] = True
    return labels, boxes, is_real


def _negative_mask(batch: int, slots: int, num_groups: int, device: torch.device) -> torch.Tensor:
    """[B, 2*G*N, 1] float, 1 on the negative half of each group."""
    mask = torch.zeros((batch, 2 * slots, 1), device=device)
    mask[:, slots:] = 1
    return mask.tile((1, num_groups, 1))


def _positive_indices(
    num_gts: Sequence[int], slots: int, num_groups: int, device: torch.device
) -> tuple[torch.Tensor, ...]:
    """Per image, the query indices of its positive copies: group-major, then box order."""
    group_starts = torch.arange(num_groups, device=device)[:, None] * (2 * slots)
    return tuple((group_starts + torch.arange(count, device=device)[None, :]).flatten() for count in num_gts)


def _noisy_labels(
    labels: torch.Tensor, is_real: torch.Tensor, label_noise_ratio: float, num_classes: int
) -> torch.Tensor:
    """Replace a ``label_noise_ratio / 2`` share of the real labels by random classes."""
    if label_noise_ratio <= 0:
        return labels
    flip = torch.rand_like(labels, dtype=torch.float) < (label_noise_ratio * 0.5)
    random_labels = torch.randint_like(flip, 0, num_classes, dtype=labels.dtype)
    return torch.where(flip & is_real, random_labels, labels)


def _noisy_boxes(boxes: torch.Tensor, negative: torch.Tensor, box_noise_scale: float) -> torch.Tensor:
    """Jitter every box corner by up to half the box size (positives) or 1..2 times that
    (negatives), both times ``box_noise_scale``; returns cxcywh in [0, 1]. boxes: [B, T, 4]."""
    if box_noise_scale <= 0:
        return boxes
    corners = box_cxcywh_to_xyxy(boxes)
    half_size = torch.tile(boxes[..., 2:] * 0.5, (1, 1, 2)) * box_noise_scale
    sign = torch.randint_like(boxes, 0, 2) * 2.0 - 1.0
    magnitude = torch.rand_like(boxes)
    magnitude = (magnitude + 1.0) * negative + magnitude * (1 - negative)
    magnitude = magnitude * sign
    corners = (corners + magnitude * half_size).clip(min=0.0, max=1.0)
    return box_xyxy_to_cxcywh(corners)


def denoising_attention_mask(
    slots: int, num_groups: int, num_queries: int, device: torch.device | None = None
) -> torch.Tensor:
    """Self-attention mask [T, T] bool, T = 2*G*N + num_queries; True = may not attend.

    Matching queries never see denoising queries, and a denoising query only sees its own group
    (and the matching queries).
    """
    num_dn = 2 * slots * num_groups
    size = num_dn + num_queries
    mask = torch.zeros((size, size), dtype=torch.bool, device=device)
    group_of = torch.arange(num_dn, device=device) // (2 * slots)
    mask[:num_dn, :num_dn] = group_of[:, None] != group_of[None, :]
    mask[num_dn:, :num_dn] = True
    return mask


def build_contrastive_denoising_group(
    targets: Sequence[Mapping[str, torch.Tensor]],
    num_classes: int,
    num_queries: int,
    class_embed: nn.Embedding,
    num_denoising: int = 100,
    label_noise_ratio: float = 0.5,
    box_noise_scale: float = 1.0,
) -> DenoisingGroup:
    """Denoising queries for one training batch.

    Args:
        targets: per image ``labels`` [n] (0..num_classes-1) and ``boxes`` [n, 4] cxcywh normalized.
        class_embed: embedding with ``num_classes + 1`` rows, the last being the padding class.

    Returns:
        (query content [B, 2*G*N, D], query boxes before sigmoid [B, 2*G*N, 4],
        attention mask [T, T] bool, dn_meta) where dn_meta holds ``dn_positive_idx`` (per image),
        ``dn_num_group`` N and ``dn_num_split`` [2*G*N, num_queries].
    """
    if num_denoising <= 0:
        raise ValueError(f"num_denoising must be positive to build denoising groups, got {num_denoising}")
    num_gts = [len(t["labels"]) for t in targets]
    device = targets[0]["labels"].device
    slots, num_groups = _group_layout(num_gts, num_denoising)

    labels, boxes, is_real = _pad_targets(targets, slots, num_classes, device)
    labels = labels.tile((1, 2 * num_groups))
    boxes = boxes.tile((1, 2 * num_groups, 1))
    is_real = is_real.tile((1, 2 * num_groups))
    negative = _negative_mask(len(targets), slots, num_groups, device)

    labels = _noisy_labels(labels, is_real, label_noise_ratio, num_classes)
    boxes = _noisy_boxes(boxes, negative, box_noise_scale)

    dn_meta: dict[str, Any] = {
        "dn_positive_idx": _positive_indices(num_gts, slots, num_groups, device),
        "dn_num_group": num_groups,
        "dn_num_split": [2 * slots * num_groups, num_queries],
    }
    return (
        class_embed(labels),
        inverse_sigmoid(boxes),
        denoising_attention_mask(slots, num_groups, num_queries, device),
        dn_meta,
    )
