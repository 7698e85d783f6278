from __future__ import annotations

import pytest
import torch

from rtdetr_spartan.data.categories import (
    MSCOCO_CATEGORIES,
    MSCOCO_CATEGORY_TO_LABEL,
    MSCOCO_LABEL_TO_CATEGORY,
    MSCOCO_LABEL_TO_NAME,
)
from rtdetr_spartan.zoo.rtdetr.postprocessor import RTDETRPostProcessor

SIZES = torch.tensor([[640.0, 480.0], [320.0, 200.0]])


def _outputs(classes: int = 80, queries: int = 50, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centers = 0.2 + 0.6 * torch.rand(2, queries, 2, generator=g)
    sizes = 0.05 + 0.3 * torch.rand(2, queries, 2, generator=g)
    return {"pred_logits": torch.randn(2, queries, classes, generator=g), "pred_boxes": torch.cat([centers, sizes], -1)}


def test_focal_top_k() -> None:
    outputs = _outputs()
    results = RTDETRPostProcessor(num_classes=80, use_focal_loss=True, num_top_queries=30)(outputs, SIZES)
    assert len(results) == 2
    for image, result in enumerate(results):
        scores = torch.sigmoid(outputs["pred_logits"][image])  # [queries, classes]
        top = scores.flatten().topk(30)
        queries, labels = top.indices // 80, top.indices % 80
        torch.testing.assert_close(result["scores"], top.values)
        assert torch.equal(result["labels"], labels)
        torch.testing.assert_close(result["scores"], scores[queries, labels])
        w, h = SIZES[image].tolist()
        cx, cy, bw, bh = outputs["pred_boxes"][image, queries].unbind(-1)
        want = torch.stack([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h], -1)
        torch.testing.assert_close(result["boxes"], want)


def test_boxes_scaled_by_width_and_height() -> None:
    outputs = {"pred_logits": torch.tensor([[[5.0, -5.0]]]), "pred_boxes": torch.tensor([[[0.5, 0.5, 0.2, 0.4]]])}
    result = RTDETRPostProcessor(num_classes=2, num_top_queries=1)(outputs, torch.tensor([[640, 480]]))[0]
    torch.testing.assert_close(result["boxes"], torch.tensor([[256.0, 144.0, 384.0, 336.0]]))
    assert result["labels"].tolist() == [0]


def test_remap_to_coco_category_ids() -> None:
    outputs = _outputs()
    plain = RTDETRPostProcessor(num_top_queries=40)(outputs, SIZES)
    remapped = RTDETRPostProcessor(num_top_queries=40, remap_mscoco_category=True)(outputs, SIZES)
    for a, b in zip(plain, remapped):
        assert b["labels"].tolist() == [MSCOCO_LABEL_TO_CATEGORY[i] for i in a["labels"].tolist()]
        assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])


def test_deploy_mode_equals_list_mode() -> None:
    outputs = _outputs()
    post = RTDETRPostProcessor(num_top_queries=25)
    results = post(outputs, SIZES)
    labels, boxes, scores = post.deploy()(outputs, SIZES)
    assert not post.training and labels.shape == (2, 25) and boxes.shape == (2, 25, 4)
    for image, result in enumerate(results):
        assert torch.equal(labels[image], result["labels"])
        assert torch.equal(boxes[image], result["boxes"])
        assert torch.equal(scores[image], result["scores"])


def test_softmax_mode_keeps_best_class_per_query() -> None:
    outputs = _outputs(classes=6, queries=20)  # 5 classes + no-object
    results = RTDETRPostProcessor(num_classes=5, use_focal_loss=False, num_top_queries=8)(outputs, SIZES)
    probs = outputs["pred_logits"].softmax(-1)[..., :-1]
    for image, result in enumerate(results):
        best, labels = probs[image].max(-1)
        top = best.topk(8)
        torch.testing.assert_close(result["scores"], top.values)
        assert torch.equal(result["labels"], labels[top.indices])
        assert result["boxes"].shape == (8, 4) and result["boxes"].max() > 1.5  # pixels, not normalized


def test_coco_table() -> None:
    assert len(MSCOCO_CATEGORIES) == 80 and len(set(MSCOCO_LABEL_TO_CATEGORY.values())) == 80
    assert [MSCOCO_LABEL_TO_CATEGORY[label] for label in (0, 11, 79)] == [1, 13, 90]
    assert MSCOCO_LABEL_TO_NAME[0] == "person" and MSCOCO_LABEL_TO_NAME[79] == "toothbrush"
    assert all(MSCOCO_CATEGORY_TO_LABEL[MSCOCO_LABEL_TO_CATEGORY[i]] == i for i in range(80))
    assert list(MSCOCO_LABEL_TO_CATEGORY.values()) == sorted(MSCOCO_LABEL_TO_CATEGORY.values())


def test_remap_needs_80_classes() -> None:
    with pytest.raises(ValueError, match="num_classes=80"):
        RTDETRPostProcessor(num_classes=3, remap_mscoco_category=True)
