from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torchvision
from PIL import Image
from pycocotools.coco import COCO

from rtdetr_spartan.data.coco import CocoDetection
from rtdetr_spartan.data.shapes import (
    SHAPE_CATEGORIES,
    make_classification_dataset,
    make_detection_dataset,
)


def digest(root: Path) -> dict[str, str]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def load_coco(path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def test_deterministic_per_seed(tmp_path: Path) -> None:
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        make_detection_dataset(tmp_path / name, train=6, val=2, size=64, seed=seed, image_format="png")
    a, b, c = (digest(tmp_path / n) for n in "abc")
    assert a == b
    assert len(a) == 6 + 2 + 2
    assert a.keys() == c.keys() and a != c


def test_coco_json_is_valid_and_consistent(shapes_root: Path) -> None:
    for split, count in (("train", 16), ("val", 8)):
        coco = load_coco(shapes_root / "annotations" / f"instances_{split}.json")
        assert len(coco.getImgIds()) == count
        cat_ids = sorted(coco.getCatIds())
        assert len(cat_ids) >= 4 and cat_ids != list(range(cat_ids[0], cat_ids[0] + len(cat_ids)))
        assert {c["name"] for c in coco.loadCats(cat_ids)} == {n for _, n in SHAPE_CATEGORIES}
        empty = [i for i in coco.getImgIds() if not coco.getAnnIds(imgIds=[i])]
        assert empty, "expected some images without objects"
        for img in coco.loadImgs(coco.getImgIds()):
            with Image.open(shapes_root / split / img["file_name"]) as im:
                assert im.size == (img["width"], img["height"])
        for ann in coco.loadAnns(coco.getAnnIds()):
            x, y, w, h = ann["bbox"]
            assert ann["iscrowd"] == 0 and ann["category_id"] in cat_ids
            assert 0 <= x and 0 <= y and x + w <= 96 and y + h <= 96
            assert min(w, h) >= 0.08 * 96  # clearly visible objects
            assert 0 < ann["area"] <= w * h


def test_boxes_are_tight_around_the_shapes(shapes_root: Path) -> None:
    coco = json.loads((shapes_root / "annotations" / "instances_train.json").read_text())
    for ann in coco["annotations"]:
        polygon = np.asarray(ann["segmentation"][0]).reshape(-1, 2)
        x, y, w, h = ann["bbox"]
        # the pixel box covers the continuous outline and exceeds it by less than a pixel
        assert polygon[:, 0].min() - 1 <= x <= polygon[:, 0].min()
        assert polygon[:, 1].min() - 1 <= y <= polygon[:, 1].min()
        assert polygon[:, 0].max() <= x + w <= polygon[:, 0].max() + 1
        assert polygon[:, 1].max() <= y + h <= polygon[:, 1].max() + 1
        px, py = polygon[:, 0], polygon[:, 1]
        outline_area = 0.5 * abs(float(np.dot(px, np.roll(py, 1)) - np.dot(py, np.roll(px, 1))))
        assert outline_area <= ann["area"] <= w * h


def test_objects_overlap_sometimes_and_differ_in_size(tmp_path: Path) -> None:
    ann_files = make_detection_dataset(tmp_path, train=40, val=0, size=64, seed=1)
    coco = json.loads(ann_files["train"].read_text())
    by_image: dict[int, list[list[float]]] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann["bbox"])

    def intersects(a: list[float], b: list[float]) -> bool:
        return min(a[0] + a[2], b[0] + b[2]) > max(a[0], b[0]) and min(a[1] + a[3], b[1] + b[3]) > max(a[1], b[1])

    overlapping = sum(intersects(a, b) for boxes in by_image.values() for a, b in itertools.combinations(boxes, 2))
    assert overlapping > 0
    sides = [max(a["bbox"][2:]) for a in coco["annotations"]]
    assert max(sides) > 2 * min(sides)
    assert len({a["category_id"] for a in coco["annotations"]}) == 4


def test_loads_with_coco_detection(shapes_root: Path) -> None:
    ds = CocoDetection(shapes_root / "val", shapes_root / "annotations" / "instances_val.json")
    assert len(ds) == 8
    assert sorted(ds.label_to_category.values()) == [c for c, _ in SHAPE_CATEGORIES]
    counts = [ds[i][1]["boxes"].shape[0] for i in range(len(ds))]
    assert 0 in counts and max(counts) > 0


def test_classification_image_folder(tmp_path: Path) -> None:
    folders = make_classification_dataset(tmp_path, train=12, val=4, size=48, seed=0)
    train = torchvision.datasets.ImageFolder(str(folders["train"]))
    assert train.classes == sorted(n for _, n in SHAPE_CATEGORIES)
    assert len(train) == 12 and np.bincount(train.targets).tolist() == [3, 3, 3, 3]
    image, _ = train[0]
    assert image.size == (48, 48)
    assert len(torchvision.datasets.ImageFolder(str(folders["val"]))) == 4


@pytest.mark.parametrize(
    "kwargs, message",
    [({"size": 16}, "size"), ({"image_format": "gif"}, "image_format"), ({"train": -1}, "train")],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    args = {"train": 2, "val": 1, "size": 64, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=message):
        make_detection_dataset(tmp_path, **args)


def test_classification_needs_one_image_per_class(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 4"):
        make_classification_dataset(tmp_path, train=2, val=0)
