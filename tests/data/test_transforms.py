from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from PIL import Image
from torchvision import tv_tensors

from rtdetr_spartan.core import lookup
from rtdetr_spartan.data.coco import CocoDetection
from rtdetr_spartan.data.transforms import (
    Compose,
    ConvertBoxes,
    RandomIoUCrop,
    SanitizeBoundingBoxes,
    ToDtype,
)

# The reference's training pipeline, with its torchvision-0.15 names, as a config lists it.
REFERENCE_TRAIN_OPS: list[dict[str, Any]] = [
    {"type": "RandomPhotometricDistort", "p": 0.5},
    {"type": "RandomZoomOut", "fill": 0},
    {"type": "RandomIoUCrop", "p": 0.8},
    {"type": "SanitizeBoundingBox", "min_size": 1},
    {"type": "RandomHorizontalFlip"},
    {"type": "Resize", "size": [64, 64]},
    {"type": "ToImageTensor"},
    {"type": "ConvertDtype"},
    {"type": "SanitizeBoundingBox", "min_size": 1},
    {"type": "ConvertBox", "out_fmt": "cxcywh", "normalize": True},
]
MODERN_TRAIN_OPS: list[dict[str, Any]] = [
    {"type": "RandomPhotometricDistort", "p": 0.5},
    {"type": "RandomZoomOut", "fill": 0},
    {"type": "RandomIoUCrop", "p": 0.8},
    {"type": "SanitizeBoundingBoxes", "min_size": 1},
    {"type": "RandomHorizontalFlip"},
    {"type": "Resize", "size": [64, 64]},
    {"type": "ToImage"},
    {"type": "ToDtype", "dtype": "float32", "scale": True},
    {"type": "SanitizeBoundingBoxes", "min_size": 1},
    {"type": "ConvertBoxes", "fmt": "cxcywh", "normalize": True},
]


def sample(
    boxes: list[list[float]], labels: list[int], w: int = 200, h: int = 100
) -> tuple[Image.Image, dict[str, Any]]:
    xyxy = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    target = {
        "boxes": tv_tensors.BoundingBoxes(xyxy, format="XYXY", canvas_size=(h, w)),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "area": torch.tensor([float(i * 100) for i in range(len(labels))]),
        "iscrowd": torch.zeros(len(labels), dtype=torch.int64),
        "image_id": torch.tensor([7]),
    }
    return Image.new("RGB", (w, h), (200, 30, 30)), target


@pytest.mark.parametrize("ops", [REFERENCE_TRAIN_OPS, MODERN_TRAIN_OPS], ids=["reference-names", "modern-names"])
def test_train_pipeline_gives_normalized_cxcywh(shapes_root: Path, ops: list[dict[str, Any]]) -> None:
    torch.manual_seed(0)
    ann_file = shapes_root / "annotations" / "instances_train.json"
    ds = CocoDetection(shapes_root / "train", ann_file, transforms=Compose(ops))
    total = 0
    for _ in range(2):
        for index in range(len(ds)):
            image, target = ds[index]
            assert isinstance(image, tv_tensors.Image) and image.dtype == torch.float32 and image.shape == (3, 64, 64)
            assert 0.0 <= image.min() and image.max() <= 1.0
            boxes = target["boxes"]
            assert isinstance(boxes, tv_tensors.BoundingBoxes) and boxes.format == tv_tensors.BoundingBoxFormat.CXCYWH
            n = boxes.shape[0]
            assert target["labels"].shape == (n,) and target["area"].shape == (n,) and target["iscrowd"].shape == (n,)
            assert ((boxes >= 0) & (boxes <= 1)).all() and (boxes[:, 2:] > 0).all()
            assert target["labels"].dtype == torch.int64 and ((target["labels"] >= 0) & (target["labels"] < 4)).all()
            assert target["size"].tolist() == [64, 64]
            total += n
    assert total > 0


def test_op_dicts_are_not_mutated() -> None:
    ops = [{"type": "Resize", "size": [8, 8]}, {"type": "ToImage"}]
    Compose(ops)
    assert ops == [{"type": "Resize", "size": [8, 8]}, {"type": "ToImage"}]


def test_sanitize_keeps_labels_with_boxes() -> None:
    # the second box has zero width and the fourth is smaller than min_size: both go
    image, target = sample([[10, 20, 30, 60], [50, 50, 50, 90], [0, 0, 5, 5], [70, 70, 70.5, 70.5]], [3, 1, 2, 0])
    _, out = SanitizeBoundingBoxes(min_size=1)(image, target)
    assert out["labels"].tolist() == [3, 2]
    assert out["area"].tolist() == [0.0, 200.0]
    assert out["iscrowd"].tolist() == [0, 0]
    assert out["boxes"].tolist() == [[10, 20, 30, 60], [0, 0, 5, 5]]
    assert out["image_id"].tolist() == [7]


def test_reference_alias_pipeline_numbers() -> None:
    image, target = sample([[10, 20, 30, 60]], [5], w=200, h=100)
    pipeline = Compose(
        [
            {"type": "Resize", "size": [50, 50]},
            {"type": "ToImageTensor"},
            {"type": "ConvertDtype"},
            {"type": "ConvertBox", "out_fmt": "cxcywh", "normalize": True},
        ]
    )
    out_image, out = pipeline(image, target)
    assert out_image.dtype == torch.float32 and out_image.shape == (3, 50, 50)
    torch.testing.assert_close(out_image[0], torch.full((50, 50), 200 / 255))
    # xyxy (10,20,30,60) on 200x100 -> centre (20,40), size (20,40) -> normalized (0.1,0.4,0.1,0.4)
    torch.testing.assert_close(out["boxes"].as_subclass(torch.Tensor), torch.tensor([[0.1, 0.4, 0.1, 0.4]]))
    assert out["labels"].tolist() == [5]


def test_aliases_match_modern_names() -> None:
    image, target = sample([[10, 20, 30, 60], [100, 10, 190, 90]], [1, 2])
    old = Compose(
        [
            {"type": "ToImageTensor"},
            {"type": "ConvertDtype"},
            {"type": "ConvertBox", "out_fmt": "cxcywh", "normalize": True},
        ]
    )
    new = Compose(
        [{"type": "ToImage"}, {"type": "ToDtype"}, {"type": "ConvertBoxes", "fmt": "cxcywh", "normalize": True}]
    )
    (a_img, a), (b_img, b) = old(image, target), new(image, target)
    torch.testing.assert_close(a_img, b_img)
    torch.testing.assert_close(a["boxes"], b["boxes"])
    assert lookup("SanitizeBoundingBox") is SanitizeBoundingBoxes


@pytest.mark.parametrize("fmt", ["xyxy", "xywh", "cxcywh"])
def test_convert_boxes_matches_box_convert(fmt: str) -> None:
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(6, 2, generator=g) * 100
    xyxy = torch.cat([xy, xy + 1 + torch.rand(6, 2, generator=g) * 50], dim=1)
    boxes = tv_tensors.BoundingBoxes(xyxy, format="XYXY", canvas_size=(160, 240))
    out = ConvertBoxes(fmt=fmt, normalize=True)(boxes)
    expected = torchvision.ops.box_convert(xyxy, "xyxy", fmt) / torch.tensor([240.0, 160, 240, 160])
    torch.testing.assert_close(out.as_subclass(torch.Tensor), expected)
    assert isinstance(out, tv_tensors.BoundingBoxes) and out.format.value.lower() == fmt


def test_random_iou_crop_probability_and_empty_targets() -> None:
    image, target = sample([[10, 20, 30, 60]], [1])
    out_image, out = RandomIoUCrop(p=0.0)(image, target)
    assert out_image is image and out is target
    empty_image, empty = sample([], [])
    torch.manual_seed(0)
    for _ in range(5):
        out_image, out = RandomIoUCrop(p=1.0)(empty_image, empty)
        assert out_image.size == (200, 100) and out["boxes"].shape == (0, 4)


def test_random_iou_crop_then_sanitize_keeps_alignment() -> None:
    # labels encode which box they belong to: label i <-> box with width 10 * (i + 1)
    boxes = [[5 + 40 * i, 10, 5 + 40 * i + 10 * (i + 1), 60] for i in range(4)]
    crop_and_sanitize = Compose([RandomIoUCrop(p=1.0), SanitizeBoundingBoxes(min_size=1)])
    torch.manual_seed(0)
    dropped = 0
    for _ in range(20):
        image, target = sample(boxes, [0, 1, 2, 3])
        _, out = crop_and_sanitize(image, target)
        assert out["labels"].shape[0] == out["boxes"].shape[0] == out["area"].shape[0]
        dropped += 4 - out["labels"].shape[0]
        widths = out["boxes"][:, 2] - out["boxes"][:, 0]
        for label, width in zip(out["labels"].tolist(), widths.tolist()):
            assert width <= 10 * (label + 1) + 1e-4  # a crop can only shrink the matching box
    assert dropped > 0  # the crops did remove boxes, so alignment was exercised


def test_to_dtype_names() -> None:
    assert ToDtype("float16").dtype == torch.float16
    with pytest.raises(ValueError, match="unknown dtype 'f32'"):
        ToDtype("f32")


def test_unknown_op_names_index_and_close_names() -> None:
    with pytest.raises(KeyError) as info:
        Compose([{"type": "ToImage"}, {"type": "RandomHorizontalFlipp"}])
    message = str(info.value)
    assert "ops[1]" in message and "RandomHorizontalFlip" in message


def test_bad_op_arguments_name_the_op() -> None:
    with pytest.raises(TypeError, match=r"ops\[0\] \(Resize\)"):
        Compose([{"type": "Resize", "sise": 3}])
    with pytest.raises(ValueError, match=r"ops\[0\]"):
        Compose([{"size": 3}])


def test_empty_compose_is_identity() -> None:
    image, target = sample([[1, 2, 3, 4]], [0])
    for pipeline in (Compose(None), Compose([])):
        out_image, out = pipeline(image, target)
        assert out_image is image and out["boxes"] is target["boxes"]
