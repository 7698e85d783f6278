from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from rtdetr_spartan.core import YAMLConfig, lookup
from rtdetr_spartan.data.categories import MSCOCO_CATEGORIES, MSCOCO_CATEGORY_TO_LABEL
from rtdetr_spartan.data.coco import CocoDetection, ImageReadError
from tests.train_utils import dataset_overrides

SHAPES_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "rtdetr" / "rtdetr_spartan_t_shapes.yml"


def write_coco(
    root: Path, images: list[tuple[int, int, int]], annotations: list[dict[str, Any]], categories: list[tuple[int, str]]
) -> Path:
    """Write RGB images ``(id, w, h)`` as ``root/img/<id>.png`` and a COCO file; returns it."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    for image_id, w, h in images:
        Image.new("RGB", (w, h), (image_id * 20 % 255, 80, 160)).save(root / "img" / f"{image_id}.png")
    for i, ann in enumerate(annotations):
        ann.setdefault("id", i + 1)
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", ann["bbox"][2] * ann["bbox"][3])
    coco = {
        "images": [{"id": i, "file_name": f"{i}.png", "width": w, "height": h} for i, w, h in images],
        "annotations": annotations,
        "categories": [{"id": c, "name": n} for c, n in categories],
    }
    ann_file = root / "ann.json"
    ann_file.write_text(json.dumps(coco))
    return ann_file


@pytest.fixture
def crafted(tmp_path: Path) -> Path:
    anns = [
        {"image_id": 1, "category_id": 40, "bbox": [10, 20, 30, 40]},
        {"image_id": 1, "category_id": 5, "bbox": [0, 0, 100, 50], "iscrowd": 1},  # crowd: dropped
        {"image_id": 1, "category_id": 5, "bbox": [90, 60, 50, 50]},  # runs past the right edge: clamped
        {"image_id": 1, "category_id": 17, "bbox": [30, 30, 0, 10]},  # zero width: dropped
        {"image_id": 1, "category_id": 17, "bbox": [150, 10, 10, 10]},  # wholly outside: dropped
        {"image_id": 2, "category_id": 17, "bbox": [5, 5, 20, 20]},
    ]
    return write_coco(tmp_path, [(1, 120, 80), (2, 64, 64), (3, 50, 40)], anns, [(40, "b"), (5, "a"), (17, "c")])


def test_registered() -> None:
    assert lookup("CocoDetection") is CocoDetection
    assert CocoDetection.__inject__ == ["transforms"]
    assert set(CocoDetection.__share__) == {"remap_mscoco_category", "num_classes"}


def test_noncontiguous_mapping_round_trip(crafted: Path) -> None:
    ds = CocoDetection(crafted.parent / "img", crafted)
    assert ds.category_to_label == {5: 0, 17: 1, 40: 2}
    assert ds.label_to_category == {0: 5, 1: 17, 2: 40}
    assert ds.category_names == {0: "a", 1: "c", 2: "b"}
    assert all(ds.category_to_label[c] == label for label, c in ds.label_to_category.items())


def test_target_contract_without_transforms(crafted: Path) -> None:
    ds = CocoDetection(crafted.parent / "img", crafted)
    image, target = ds[0]
    assert isinstance(image, Image.Image) and image.size == (120, 80)
    boxes = target["boxes"]
    assert isinstance(boxes, tv_tensors.BoundingBoxes)
    assert boxes.format == tv_tensors.BoundingBoxFormat.XYXY and tuple(boxes.canvas_size) == (80, 120)
    # crowd, zero-width and outside boxes gone; the edge box clamped to the image
    torch.testing.assert_close(boxes.as_subclass(torch.Tensor), torch.tensor([[10.0, 20, 40, 60], [90, 60, 120, 80]]))
    assert target["labels"].tolist() == [2, 0] and target["labels"].dtype == torch.int64
    assert target["area"].tolist() == [1200.0, 2500.0]
    assert target["iscrowd"].tolist() == [0, 0]
    assert target["image_id"].tolist() == [1] and target["image_id"].dtype == torch.int64
    assert target["orig_size"].tolist() == [120, 80] and target["size"].tolist() == [120, 80]


def test_image_without_annotations_is_kept(crafted: Path) -> None:
    ds = CocoDetection(crafted.parent / "img", crafted)
    assert len(ds) == 3
    _, target = ds[2]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert target["image_id"].item() == 3


def test_size_follows_transforms(crafted: Path) -> None:
    compose = lookup("Compose")
    ops = [{"type": "Resize", "size": [32, 48]}, {"type": "ToImage"}, {"type": "ToDtype"}]
    ds = CocoDetection(crafted.parent / "img", crafted, transforms=compose(ops))
    image, target = ds[0]
    assert image.shape == (3, 32, 48)
    assert target["size"].tolist() == [48, 32] and target["orig_size"].tolist() == [120, 80]


def test_mscoco_remap(tmp_path: Path) -> None:
    anns = [{"image_id": 1, "category_id": c, "bbox": [1, 1, 5, 5]} for c in (1, 44, 90)]
    ann_file = write_coco(tmp_path, [(1, 32, 32)], anns, [(1, "person"), (44, "bottle"), (90, "toothbrush")])
    ds = CocoDetection(tmp_path / "img", ann_file, remap_mscoco_category=True, num_classes=80)
    _, target = ds[0]
    assert target["labels"].tolist() == [0, MSCOCO_CATEGORY_TO_LABEL[44], 79]
    assert len(ds.label_to_category) == 80 and ds.label_to_category[79] == 90
    assert [ds.category_names[i] for i in range(80)] == [n for _, n in MSCOCO_CATEGORIES]


def test_mscoco_remap_rejects_unknown_ids(tmp_path: Path) -> None:
    ann_file = write_coco(tmp_path, [(1, 32, 32)], [], [(12, "not-a-coco-id")])
    with pytest.raises(ValueError, match=r"\[12\]") as info:
        CocoDetection(tmp_path / "img", ann_file, remap_mscoco_category=True)
    assert str(ann_file) in str(info.value)


def test_num_classes_too_small(crafted: Path) -> None:
    with pytest.raises(ValueError) as info:
        CocoDetection(crafted.parent / "img", crafted, num_classes=2)
    message = str(info.value)
    assert "num_classes=2" in message and "3 classes" in message and str(crafted) in message
    CocoDetection(crafted.parent / "img", crafted, num_classes=3)  # enough


def test_annotation_with_unlisted_category(tmp_path: Path) -> None:
    anns = [{"image_id": 1, "category_id": 9, "bbox": [1, 1, 4, 4]}]
    ann_file = write_coco(tmp_path, [(1, 32, 32)], anns, [(3, "x")])
    with pytest.raises(ValueError, match="category_id 9"):
        CocoDetection(tmp_path / "img", ann_file)


def test_corrupt_image_names_file_and_id(crafted: Path) -> None:
    bad = crafted.parent / "img" / "2.png"
    bad.write_bytes(b"this is not a png")
    ds = CocoDetection(crafted.parent / "img", crafted)
    with pytest.raises(ImageReadError) as info:
        ds[1]
    assert str(bad) in str(info.value) and "image id 2" in str(info.value)


def test_missing_image_is_named_at_construction(crafted: Path) -> None:
    (crafted.parent / "img" / "3.png").unlink()
    with pytest.raises(ImageReadError, match=r"1 of 3 images listed in .*ann\.json are missing.*3\.png \(image id 3\)"):
        CocoDetection(crafted.parent / "img", crafted)
    ds = CocoDetection(crafted.parent / "img", crafted, check_images=False)  # then found when read
    with pytest.raises(ImageReadError, match=r"3\.png.*image id 3"):
        ds[2]


def test_annotation_of_unlisted_image_is_an_error(tmp_path: Path) -> None:
    anns = [
        {"image_id": 1, "category_id": 3, "bbox": [1, 1, 4, 4]},
        {"image_id": 9, "category_id": 3, "bbox": [1, 1, 4, 4]},
    ]
    ann_file = write_coco(tmp_path, [(1, 32, 32)], anns, [(3, "x")])
    with pytest.raises(ValueError, match=r"annotation 2 \(image_id 9\)"):
        CocoDetection(tmp_path / "img", ann_file)


def test_one_warning_counts_dropped_and_clamped_boxes(crafted: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="rtdetr_spartan.data.coco"):
        ds = CocoDetection(crafted.parent / "img", crafted)
        for index in range(len(ds)):
            ds[index]
    (record,) = [r for r in caplog.records if "boxes" in r.getMessage()]
    message = record.getMessage()
    assert str(crafted) in message and "of 5 boxes, 2 are dropped" in message and "1 are clamped" in message


def test_clean_boxes_give_no_warning(tmp_path: Path, caplog) -> None:
    ann_file = write_coco(
        tmp_path, [(1, 32, 32)], [{"image_id": 1, "category_id": 3, "bbox": [0, 0, 32, 32]}], [(3, "x")]
    )
    with caplog.at_level(logging.WARNING, logger="rtdetr_spartan.data.coco"):
        CocoDetection(tmp_path / "img", ann_file)
    assert not caplog.records


def test_missing_or_broken_annotation_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.json"):
        CocoDetection(tmp_path, tmp_path / "nope.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [')
    with pytest.raises(ValueError, match="broken.json is not a valid COCO JSON"):
        CocoDetection(tmp_path, broken)


def test_return_masks(shapes_root: Path) -> None:
    ds = CocoDetection(shapes_root / "val", shapes_root / "annotations" / "instances_val.json", return_masks=True)
    _, target = ds[0]
    masks, boxes = target["masks"], target["boxes"]
    assert isinstance(masks, tv_tensors.Mask) and masks.shape[0] == boxes.shape[0] > 0
    for mask, box in zip(masks, boxes):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        # the polygon mask lies inside its box (one pixel of rasterisation slack)
        assert xs.min() >= box[0] - 1 and xs.max() <= box[2] and ys.min() >= box[1] - 1 and ys.max() <= box[3]


def test_generated_dataset_labels_match_annotations(shapes_root: Path) -> None:
    ann_file = shapes_root / "annotations" / "instances_train.json"
    ds = CocoDetection(shapes_root / "train", ann_file, num_classes=4)
    assert ds.label_to_category == {0: 3, 1: 7, 2: 11, 3: 20}
    for index in range(len(ds)):
        _, target = ds[index]
        anns = ds.coco.loadAnns(ds.coco.getAnnIds(imgIds=[target["image_id"].item()]))
        assert [ds.label_to_category[label] for label in target["labels"].tolist()] == [a["category_id"] for a in anns]


def test_missing_validation_image_stops_the_config_before_training(shapes_root: Path, tmp_path: Path) -> None:
    """The issue's reproduction: images[0].file_name of the validation file set to a missing
    file. Building the validation loader (the solver does it before the first epoch) names it."""
    ann = json.loads((shapes_root / "annotations" / "instances_val.json").read_text())
    ann["images"][0]["file_name"] = "gone.jpg"
    ann_file = tmp_path / "instances_val.json"
    ann_file.write_text(json.dumps(ann))
    overrides = dataset_overrides(shapes_root)
    overrides["val_dataloader"]["dataset"]["ann_file"] = str(ann_file)
    cfg = YAMLConfig(SHAPES_CONFIG, **overrides)
    with pytest.raises(ImageReadError, match=r"1 of 8 images listed in .*instances_val\.json are missing.*gone\.jpg"):
        cfg.build("val_dataloader")
