"""Every record of a COCO file is checked when the dataset is built; a bad one is named by file,
id and field instead of ending in a bare KeyError at the first batch."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from rtdetr_spartan.data.coco import CocoDetection
from rtdetr_spartan.data.coco_validation import coco_problems

GOOD: dict[str, Any] = {
    "images": [{"id": 1, "file_name": "1.png", "width": 32, "height": 32}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 1, 8, 8], "area": 64, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [10, 10, 8, 8], "area": 64, "iscrowd": 0},
    ],
    "categories": [{"id": 3, "name": "x"}],
}


def build(tmp_path: Path, coco: Any) -> CocoDetection:
    Image.new("RGB", (32, 32)).save(tmp_path / "1.png")
    ann_file = tmp_path / "ann.json"
    ann_file.write_text(json.dumps(coco))
    return CocoDetection(tmp_path, ann_file)


def with_annotation(**changes: Any) -> dict[str, Any]:
    """GOOD with annotation 2 changed (a value of None removes the field)."""
    coco = copy.deepcopy(GOOD)
    ann = coco["annotations"][1]
    for key, value in changes.items():
        if value is None:
            ann.pop(key)
        else:
            ann[key] = value
    return coco


def test_good_file_has_no_problems(tmp_path: Path) -> None:
    assert coco_problems(GOOD) == []
    assert len(build(tmp_path, GOOD)) == 1


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"bbox": None}, "annotation 2 has no 'bbox'"),
        ({"category_id": None}, "annotation 2 has no 'category_id'"),
        ({"image_id": None}, "annotation 2 has no 'image_id'"),
        ({"bbox": [1, 2, 3]}, "annotation 2 'bbox' [1, 2, 3] has 3 values, expected 4"),
        ({"bbox": [1, 2, "3", 4]}, "annotation 2 'bbox' [1, 2, '3', 4] holds a value that is not a number"),
        ({"bbox": "1 2 3 4"}, "annotation 2 'bbox' is '1 2 3 4', expected a list"),
        ({"category_id": 9}, "annotation 2 (image 1) has category_id 9, which is not in 'categories' [3]"),
        ({"category_id": "3"}, "annotation 2 has 'category_id' '3', expected an integer"),
        ({"image_id": 1.0}, "annotation 2 has 'image_id' 1.0, expected an integer"),
        ({"image_id": 9}, "annotation 2 (image_id 9) refers to an image that is not in 'images'"),
        ({"area": "big"}, "annotation 2 'area' is 'big', expected a number"),
        ({"id": 1}, "annotation 1 is listed twice"),
        ({"id": None}, "annotation entry 1 of 'annotations' has no 'id'"),
    ],
)
def test_bad_annotation_is_named_by_file_id_and_field(tmp_path: Path, changes: dict[str, Any], expected: str) -> None:
    with pytest.raises(ValueError) as info:
        build(tmp_path, with_annotation(**changes))
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'ann.json'}: 1 invalid record: ")
    assert expected in message and "'bbox' [x, y, width, height]" in message  # the format hint


@pytest.mark.parametrize(
    "coco, expected",
    [
        ([GOOD], "the file holds a list, expected an object"),
        ({**GOOD, "annotations": {"1": GOOD["annotations"][0]}}, "'annotations' is a dict, expected a list"),
        ({**GOOD, "images": [{"file_name": "1.png"}]}, "image entry 0 of 'images' has no 'id'"),
        ({**GOOD, "images": [{"id": 1, "width": 32}]}, "image 1 has no 'file_name'"),
        (
            {**GOOD, "images": [{"id": 1, "file_name": "1.png", "width": 0}]},
            "image 1: 'width' is 0, expected a positive",
        ),
        ({**GOOD, "categories": [{"name": "x"}]}, "category entry 0 of 'categories' has no 'id'"),
        ({**GOOD, "annotations": [[1, 1, 8, 8]]}, "annotation entry 0 of 'annotations' is a list, expected an object"),
    ],
)
def test_bad_file_structure_is_named(tmp_path: Path, coco: Any, expected: str) -> None:
    with pytest.raises(ValueError, match="ann.json: ") as info:
        build(tmp_path, coco)
    assert expected in str(info.value)


def test_many_problems_are_counted_and_a_few_quoted(tmp_path: Path) -> None:
    coco = copy.deepcopy(GOOD)
    coco["annotations"] = [{"id": i, "image_id": 1, "category_id": 3} for i in range(1, 9)]
    with pytest.raises(ValueError) as info:
        build(tmp_path, coco)
    message = str(info.value)
    assert "8 invalid records: annotation 1 has no 'bbox'; annotation 2 has no 'bbox'" in message
    assert "annotation 5 has no 'bbox' (and 3 more)" in message and "annotation 6" not in message


def test_degenerate_boxes_are_not_structure_errors(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Negative or zero sizes and NaN are well-formed numbers: loading drops them, with a warning."""
    coco = with_annotation(bbox=[4, 4, -3, 5])
    coco["annotations"][0]["bbox"] = [1, 1, 0, 8]
    with caplog.at_level(logging.WARNING, logger="rtdetr_spartan.data.coco"):
        dataset = build(tmp_path, coco)
    assert "of 2 boxes, 2 are dropped" in caplog.text
    assert len(dataset[0][1]["boxes"]) == 0


def test_file_without_annotations_warns_once_naming_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for coco in ({**GOOD, "annotations": []}, {k: v for k, v in GOOD.items() if k != "annotations"}):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="rtdetr_spartan.data.coco"):
            dataset = build(tmp_path, coco)
            dataset[0]
        (record,) = caplog.records
        assert f"{tmp_path / 'ann.json'} holds no annotations" in record.getMessage()
        assert "1 images" in record.getMessage()


def test_file_with_annotations_does_not_warn_about_them(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="rtdetr_spartan.data.coco"):
        build(tmp_path, GOOD)
    assert "no annotations" not in caplog.text
