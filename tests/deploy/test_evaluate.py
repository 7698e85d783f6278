"""deploy.evaluate at function level: the label -> category mapping a model is scored with, and
the COCO numbers of a predictor whose boxes are the ground truth (the tool runs in tests/tools)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from rtdetr_spartan.data.coco import CocoDetection
from rtdetr_spartan.deploy.evaluate import (
    CategoryMismatchError,
    evaluate_predictor,
    evaluation_mapping,
    validation_dataset,
)
from rtdetr_spartan.deploy.metadata import ModelInfo
from tests.deploy.deploy_utils import FixedBoxes

STORED = {0: 3, 1: 7, 2: 11, 3: 20}  # the shapes file's category ids, as a model trained on it stores them


def _dataset(tmp_path: Path, categories: list[int], annotated: list[int]) -> CocoDetection:
    Image.new("RGB", (32, 32)).save(tmp_path / "1.png")
    coco = {
        "images": [{"id": 1, "file_name": "1.png", "width": 32, "height": 32}],
        "categories": [{"id": c, "name": f"c{c}"} for c in categories],
        "annotations": [
            {"id": i + 1, "image_id": 1, "category_id": c, "bbox": [1, 1, 8, 8], "area": 64, "iscrowd": 0}
            for i, c in enumerate(annotated)
        ],
    }
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    return validation_dataset(tmp_path / "ann.json", tmp_path, (32, 32))


def _info(label_to_category: dict[int, int], names: dict[int, str] | None = None) -> ModelInfo:
    names = names if names is not None else {k: f"c{v}" for k, v in label_to_category.items()}
    return ModelInfo((32, 32), len(label_to_category), label_to_category, names)


def test_mapping_uses_the_stored_ids_on_a_subset_file(tmp_path: Path) -> None:
    dataset = _dataset(tmp_path, [3, 11, 20], [3, 11, 20])
    assert dataset.label_to_category == {0: 3, 1: 11, 2: 20}  # the file's own order: wrong for the model
    assert evaluation_mapping(_info(STORED), dataset) == STORED
    identity_with_names = {0: 0, 1: 1}
    assert evaluation_mapping(_info(identity_with_names), _dataset(tmp_path, [1], [1])) == identity_with_names


def test_mapping_without_stored_ids_is_the_files(tmp_path: Path) -> None:
    dataset = _dataset(tmp_path, [3, 11, 20], [3, 11, 20])
    placeholders = _info({i: i for i in range(4)}, {i: f"class_{i}" for i in range(4)})
    assert evaluation_mapping(placeholders, dataset) == {0: 3, 1: 11, 2: 20}
    # identity ids beside real names, but the file's ids lie outside 0..3: a placeholder as well
    identity_named = _info({i: i for i in range(4)}, {0: "c3", 1: "c11", 2: "c20", 3: "c30"})
    assert evaluation_mapping(identity_named, dataset) == {0: 3, 1: 11, 2: 20}
    too_few = _info({i: i for i in range(2)}, {i: f"class_{i}" for i in range(2)})
    with pytest.raises(CategoryMismatchError, match="has 3 categories but the model predicts 2 classes"):
        evaluation_mapping(too_few, dataset)


def test_mapping_refuses_annotated_categories_the_model_does_not_know(tmp_path: Path) -> None:
    with pytest.raises(CategoryMismatchError) as info:
        evaluation_mapping(_info(STORED), _dataset(tmp_path, [3, 11, 99], [3, 99]))
    message = str(info.value)
    assert str(tmp_path / "ann.json") in message and "99 ('c99')" in message and "[3, 7, 11, 20]" in message
    # listed but never annotated: its AP is undefined and not averaged, so it is no error
    assert evaluation_mapping(_info(STORED), _dataset(tmp_path, [3, 11, 99], [3, 11])) == STORED


@pytest.mark.parametrize("backend", ["faster_coco_eval", "pycocotools"])
def test_ground_truth_boxes_score_ap_one_and_a_shifted_box_zero(tmp_path: Path, backend: str) -> None:
    _dataset(tmp_path, [3, 11, 20], [3, 11])  # boxes [1, 1, 8, 8] XYWH of categories 3 and 11
    truth = FixedBoxes(_info(STORED), labels=[0, 2], boxes=[[1, 1, 9, 9], [1, 1, 9, 9]])
    stats = evaluate_predictor(truth, tmp_path / "ann.json", tmp_path, backend, batch_size=1).coco_eval["bbox"].stats
    assert stats[0] == pytest.approx(1.0) and stats[1] == pytest.approx(1.0)
    # label 1 is category 7, not annotated; the category-11 box moved off its object (IoU 0)
    wrong = FixedBoxes(_info(STORED), labels=[1, 2], boxes=[[1, 1, 9, 9], [20, 20, 28, 28]])
    stats = evaluate_predictor(wrong, tmp_path / "ann.json", tmp_path, backend, batch_size=1).coco_eval["bbox"].stats
    assert stats[0] == pytest.approx(0.0)
