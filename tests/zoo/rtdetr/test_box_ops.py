from __future__ import annotations

import torch

from rtdetr_spartan.zoo.rtdetr.box_ops import (
    box_cxcywh_to_xyxy,
    box_iou,
    box_xyxy_to_cxcywh,
    generalized_box_iou,
    paired_box_iou,
    paired_generalized_box_iou,
)


def _random_cxcywh(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centers = torch.rand(n, 2, generator=g)
    sizes = 0.05 + 0.5 * torch.rand(n, 2, generator=g)
    return torch.cat([centers, sizes], -1)


# The DETR-style formulas the reference writes by hand; torchvision must give the same bits.
def _detr_cxcywh_to_xyxy(x: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = x.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], -1)


def _detr_xyxy_to_cxcywh(x: torch.Tensor) -> torch.Tensor:
    x0, y0, x1, y1 = x.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], -1)


def _detr_iou_union(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = torch.max(a[:, None, :2], b[:, :2])
    rb = torch.min(a[:, None, 2:], b[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, :, 0] * wh[:, :, 1]
    union = area_a[:, None] + area_b - inter
    return inter / union, union


def _detr_giou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    iou, union = _detr_iou_union(a, b)
    lt = torch.min(a[:, None, :2], b[:, :2])
    rb = torch.max(a[:, None, 2:], b[:, 2:])
    wh = (rb - lt).clamp(min=0)
    area = wh[:, :, 0] * wh[:, :, 1]
    return iou - (area - union) / area


def test_conversions_are_bit_identical_to_reference_formulas() -> None:
    boxes = _random_cxcywh(64, 0)
    xyxy = box_cxcywh_to_xyxy(boxes)
    assert torch.equal(xyxy, _detr_cxcywh_to_xyxy(boxes))
    assert torch.equal(box_xyxy_to_cxcywh(xyxy), _detr_xyxy_to_cxcywh(xyxy))
    torch.testing.assert_close(box_xyxy_to_cxcywh(xyxy), boxes)


def test_conversions_keep_leading_dims() -> None:
    boxes = _random_cxcywh(12, 1).reshape(2, 6, 4)
    assert box_cxcywh_to_xyxy(boxes).shape == (2, 6, 4)
    assert torch.equal(box_cxcywh_to_xyxy(boxes)[1], box_cxcywh_to_xyxy(boxes[1]))


def test_iou_and_giou_are_bit_identical_to_reference_formulas() -> None:
    a = box_cxcywh_to_xyxy(_random_cxcywh(40, 2))
    b = box_cxcywh_to_xyxy(_random_cxcywh(30, 3))
    assert torch.equal(box_iou(a, b), _detr_iou_union(a, b)[0])
    assert torch.equal(generalized_box_iou(a, b), _detr_giou(a, b))


def test_paired_versions_are_the_diagonal() -> None:
    a = box_cxcywh_to_xyxy(_random_cxcywh(25, 4))
    b = box_cxcywh_to_xyxy(_random_cxcywh(25, 5))
    assert torch.equal(paired_box_iou(a, b), torch.diag(_detr_iou_union(a, b)[0]))
    assert torch.equal(paired_generalized_box_iou(a, b), torch.diag(_detr_giou(a, b)))
    assert paired_box_iou(a[:0], b[:0]).shape == (0,)


def test_known_values() -> None:
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [4.0, 0.0, 5.0, 1.0]])
    torch.testing.assert_close(box_iou(a, b), torch.tensor([[1 / 7, 0.0]]))
    # Enclosing boxes: 3x3 (union 7) and 5x2 (union 5).
    torch.testing.assert_close(generalized_box_iou(a, b), torch.tensor([[1 / 7 - 2 / 9, -0.5]]))
