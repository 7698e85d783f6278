"""YOLODetection: YOLO labels read directly, compared with the COCO dataset of the same images,
scored by the project's COCO evaluator, and every bad-input error."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from PIL import Image

from rtdetr_spartan.core import YAMLConfig
from rtdetr_spartan.data.categories import file_categories
from rtdetr_spartan.data.coco import CocoDetection, ImageReadError
from rtdetr_spartan.data.coco_eval import CocoEvaluator
from rtdetr_spartan.data.layouts import detect_layout, detection_overrides
from rtdetr_spartan.data.shapes import make_yolo_dataset
from rtdetr_spartan.data.yolo import (
    YOLODetection,
    YOLOFormatError,
    image_size,
    label_path,
    read_data_yaml,
    read_label_file,
)
from rtdetr_spartan.deploy.metadata import categories_from_config
from tests.train_utils import TINY_CONFIG, as_cli_updates
from tools.train import main as train_main

REPO_ROOT = Path(__file__).resolve().parents[2]
SHAPES_CONFIG = REPO_ROOT / "configs" / "rtdetr" / "rtdetr_spartan_t_shapes.yml"
NAMES_YAML = "train: images\nval: images\nnames: [cat, dog]\n"


def write_dataset(root: Path, labels: dict[str, str | None], data_yaml: str = NAMES_YAML) -> Path:
    """``root/images/<name>.png`` (40x20 px) with ``root/labels/<name>.txt`` holding ``labels[name]``
    (no label file for None); returns the data.yaml."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for name, text in labels.items():
        Image.new("RGB", (40, 20)).save(root / "images" / f"{name}.png")
        if text is not None:
            (root / "labels" / f"{name}.txt").write_text(text)
    (root / "data.yaml").write_text(data_yaml)
    return root / "data.yaml"


def yolo_dataset(data_yaml: Path) -> YOLODetection:
    return YOLODetection(data_yaml.parent / "images", data_yaml)


def test_items_equal_the_coco_dataset_of_the_same_images(shapes_root: Path, yolo_root: Path) -> None:
    coco = CocoDetection(shapes_root / "val", shapes_root / "annotations" / "instances_val.json")
    yolo = YOLODetection(yolo_root / "images" / "val", yolo_root / "data.yaml")
    assert len(yolo) == len(coco) == 8
    assert [yolo.category_names[i] for i in range(4)] == [coco.category_names[i] for i in range(4)]
    assert yolo.label_to_category == {0: 0, 1: 1, 2: 2, 3: 3}
    for index in range(len(coco)):
        (yolo_image, yolo_target), (coco_image, coco_target) = yolo[index], coco[index]
        assert yolo_image.size == coco_image.size
        torch.testing.assert_close(yolo_target["boxes"], coco_target["boxes"], atol=1e-3, rtol=0)
        assert torch.equal(yolo_target["labels"], coco_target["labels"])
        assert torch.equal(yolo_target["orig_size"], coco_target["orig_size"])


def test_ground_truth_scores_map_one_through_the_evaluator(yolo_root: Path) -> None:
    dataset = YOLODetection(yolo_root / "images" / "train", yolo_root / "data.yaml")
    evaluator = CocoEvaluator(dataset.coco, iou_types=("bbox",))
    predictions = {}
    for index in range(len(dataset)):
        _, target = dataset.load_item(index)
        labels = torch.tensor([dataset.label_to_category[int(v)] for v in target["labels"]], dtype=torch.int64)
        boxes = target["boxes"].as_subclass(torch.Tensor)
        predictions[int(target["image_id"])] = {"boxes": boxes, "scores": torch.ones(len(labels)), "labels": labels}
    assert sum(len(p["labels"]) for p in predictions.values()) > 20
    evaluator.update(predictions)
    evaluator.synchronize_between_processes()
    evaluator.accumulate()
    stats = evaluator.summarize()
    assert stats[0] == pytest.approx(1.0) and stats[1] == pytest.approx(1.0)


def test_dataloader_batch_through_the_shapes_config_transforms(yolo_root: Path) -> None:
    cfg = YAMLConfig(SHAPES_CONFIG, **detection_overrides(detect_layout(yolo_root)))
    loader = cfg.build("train_dataloader")
    assert isinstance(loader.dataset, YOLODetection) and cfg.yaml_cfg["num_classes"] == 4
    images, targets = next(iter(loader))
    assert images.shape == (8, 3, 160, 160)
    boxes = torch.cat([t["boxes"] for t in targets])
    assert len(boxes) > 0 and float(boxes.min()) >= 0 and float(boxes.max()) <= 1  # cxcywh normalized
    labels = torch.cat([t["labels"] for t in targets])
    assert len(labels) == len(boxes) and set(labels.tolist()) <= {0, 1, 2, 3}


def test_export_metadata_names_come_from_the_data_yaml(yolo_root: Path) -> None:
    cfg = YAMLConfig(SHAPES_CONFIG, **detection_overrides(detect_layout(yolo_root)))
    label_to_category, names = categories_from_config(cfg.yaml_cfg)
    assert label_to_category == {0: 0, 1: 1, 2: 2, 3: 3}
    assert names == {0: "square", 1: "circle", 2: "triangle", 3: "star"}


def test_both_folder_arrangements_and_polygon_lines(tmp_path: Path) -> None:
    # train/images + train/labels (as Roboflow's YOLO export); a polygon line gives its bounding box
    (tmp_path / "train" / "images").mkdir(parents=True)
    (tmp_path / "train" / "labels").mkdir()
    Image.new("RGB", (40, 20)).save(tmp_path / "train" / "images" / "a.png")
    (tmp_path / "train" / "labels" / "a.txt").write_text("1 0.25 0.5 0.5 0.5\n\n0 0.1 0.1 0.6 0.1 0.6 0.9 0.1 0.9\n")
    (tmp_path / "data.yaml").write_text("train: ../train/images\nval: ../train/images\nnc: 2\nnames: [cat, dog]\n")
    dataset = YOLODetection(read_data_yaml(tmp_path / "data.yaml").splits["train"][0], tmp_path / "data.yaml")
    _, target = dataset.load_item(0)
    expected = torch.tensor([[0.0, 5.0, 20.0, 15.0], [4.0, 2.0, 24.0, 18.0]])
    torch.testing.assert_close(target["boxes"].as_subclass(torch.Tensor), expected)
    assert target["labels"].tolist() == [1, 0]


def test_label_path_replaces_the_last_images_folder() -> None:
    assert label_path("d/images/train/x.jpg") == Path("d/labels/train/x.txt")
    assert label_path("images/train/images/x.JPG") == Path("images/train/labels/x.txt")


def test_image_without_label_file_is_background_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data_yaml = write_dataset(tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n", "b": None, "c": None, "d": ""})
    with caplog.at_level(logging.WARNING, logger="rtdetr_spartan.data.yolo"):
        dataset = yolo_dataset(data_yaml)
    warnings = [r.getMessage() for r in caplog.records if r.name == "rtdetr_spartan.data.yolo"]
    assert len(warnings) == 1 and warnings[0].startswith("2 of 4 images have no label file")
    assert [len(dataset.load_item(i)[1]["labels"]) for i in range(4)] == [1, 0, 0, 0]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("0 0.5 0.5 0.2", "a.txt:2: 4 numbers; expected 'class cx cy w h'"),
        ("2 0.5 0.5 0.2 0.2", "a.txt:2: class id 2 is not in 0..1"),
        ("0 0.95 0.5 0.2 0.2", "a.txt:2: box x 0.85..1.05, y 0.4..0.6 lies outside [0, 1]"),
        ("0 0.5 0.5 -0.2 0.2", "a.txt:2: negative box width or height"),
        ("1.5 0.5 0.5 0.2 0.2", "a.txt:2: class id 1.5 is not an integer"),
        ("cat 0.5 0.5 0.2 0.2", "a.txt:2: non-numeric value"),
    ],
)
def test_bad_label_line_names_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    data_yaml = write_dataset(tmp_path, {"a": f"1 0.5 0.5 0.2 0.2\n{line}\n"})
    with pytest.raises(YOLOFormatError, match="labels") as info:
        yolo_dataset(data_yaml)
    assert message in str(info.value) and str(tmp_path / "labels" / "a.txt") in str(info.value)


def test_box_edges_within_float_tolerance_are_accepted(tmp_path: Path) -> None:
    file = tmp_path / "a.txt"
    file.write_text("0 0.5000004 0.5 1.0000004 1.0\n")
    ((class_id, cx, cy, w, h),) = read_label_file(file, num_classes=1)
    assert class_id == 0 and w == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("val: images\nnames: [cat]\n", "missing key 'train'"),
        ("train: images\nval: images\n", "missing key 'names'"),
        ("train: images\nnames: [cat]\n", "missing key 'val'"),
        ("train: images\nval: images\nnames: {0: cat, 2: dog}\n", "'names' ids must be 0..1 without gaps"),
        ("train: images\nval: images\nnc: 3\nnames: [cat, dog]\n", "nc is 3 but 'names' lists 2 classes"),
        ("train: images\nval: nowhere\nnames: [cat]\n", "'val' points to"),
    ],
)
def test_bad_data_yaml_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "data.yaml").write_text(text)
    with pytest.raises(YOLOFormatError, match="data.yaml") as info:
        read_data_yaml(tmp_path / "data.yaml")
    assert message in str(info.value)


def test_names_dict_and_dataset_root_path(tmp_path: Path) -> None:
    write_dataset(tmp_path / "ds", {"a": "1 0.5 0.5 0.2 0.2\n"})
    (tmp_path / "data.yaml").write_text("path: ds\ntrain: images\nval: images\nnames: {1: dog, 0: cat}\n")
    config = read_data_yaml(tmp_path / "data.yaml")
    assert config.names == ("cat", "dog") and config.splits["val"] == (tmp_path / "ds" / "images",)
    (tmp_path / "data.yaml").write_text("path: ds\ntrain: images\nvalidation: images\nnames: {'0': cat, '1': dog}\n")
    config = read_data_yaml(tmp_path / "data.yaml")
    assert config.names == ("cat", "dog") and config.splits["val"] == (tmp_path / "ds" / "images",)


def test_options_a_yolo_dataset_cannot_take(tmp_path: Path) -> None:
    data_yaml = write_dataset(tmp_path, {"a": ""})
    with pytest.raises(ValueError, match="remap_mscoco_category"):
        YOLODetection(tmp_path / "images", data_yaml, remap_mscoco_category=True)
    with pytest.raises(ValueError, match="num_classes=1 is smaller than the 2 classes"):
        YOLODetection(tmp_path / "images", data_yaml, num_classes=1)
    with pytest.raises(YOLOFormatError, match="no images"):
        YOLODetection(tmp_path / "labels", data_yaml)


def test_image_size_applies_exif_rotation_and_is_cached(tmp_path: Path) -> None:
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when displayed
    Image.new("RGB", (40, 20)).save(path, exif=exif)
    assert image_size(path) == (20, 40)
    assert image_size(path) == (20, 40)
    plain = tmp_path / "plain.png"
    Image.new("RGB", (40, 20)).save(plain)
    assert image_size(plain) == (40, 20)


@pytest.mark.slow
def test_training_epoch_and_evaluation_on_a_yolo_dataset(tmp_path: Path) -> None:
    """tools/train.py on a YOLO dataset through detection_overrides: one epoch, then COCO scoring
    named by the data.yaml's classes."""
    make_yolo_dataset(tmp_path / "data", train=4, val=3, size=96, seed=1)
    out = tmp_path / "out"
    updates = as_cli_updates(detection_overrides(detect_layout(tmp_path / "data")))
    argv = ["-c", str(TINY_CONFIG), "--device", "cpu", "--output-dir", str(out), "-u", *updates, "epochs=1"]
    argv += ["train_dataloader.batch_size=2"]
    assert train_main(argv) == 0
    summary = json.loads((out / "eval" / "summary.json").read_text())
    assert len(summary["stats"]) == 12 and summary["num_images"] == 3
    named = {row["category_id"]: row["name"] for row in summary["per_class"]}
    assert named == {0: "square", 1: "circle", 2: "triangle", 3: "star"}


def test_split_given_as_an_image_list_file(yolo_root: Path, tmp_path: Path) -> None:
    images = sorted((yolo_root / "images" / "val").glob("*.jpg"))[:3]
    listing = tmp_path / "val.txt"
    listing.write_text("".join(f"{p}\n" for p in images))
    from_list = YOLODetection(listing, yolo_root / "data.yaml")
    from_folder = YOLODetection(yolo_root / "images" / "val", yolo_root / "data.yaml")
    assert len(from_list) == 3
    for index in range(3):
        assert torch.equal(from_list.load_item(index)[1]["boxes"], from_folder.load_item(index)[1]["boxes"])
    listing.write_text(f"{images[0]}\n{tmp_path / 'gone.jpg'}\n")
    with pytest.raises(ImageReadError, match="gone.jpg does not exist"):
        YOLODetection(listing, yolo_root / "data.yaml")


def test_label_file_with_byte_order_mark_and_crlf(tmp_path: Path) -> None:
    file = tmp_path / "a.txt"
    file.write_bytes("\ufeff1 0.5 0.5 0.2 0.2\r\n0 0.25 0.25 0.5 0.5\r\n".encode())
    assert [obj[0] for obj in read_label_file(file, num_classes=2)] == [1, 0]
    file.write_bytes(b"0 0.5 0.5 0.2 0.2\n\xff\xfe\n")
    with pytest.raises(YOLOFormatError, match="a.txt is not a UTF-8 text label file"):
        read_label_file(file, num_classes=2)


def test_dataset_root_that_exists_nowhere_falls_back_to_the_data_yaml_folder(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_dataset(tmp_path, {"a": ""}, data_yaml="path: ../datasets/coco8\ntrain: images\nval: images\nnames: [a]\n")
    with caplog.at_level(logging.WARNING, logger="rtdetr_spartan.data.yolo"):
        config = read_data_yaml(tmp_path / "data.yaml")
    assert config.root == tmp_path and config.splits["train"] == (tmp_path / "images",)
    assert "path '../datasets/coco8' does not exist" in caplog.text


def test_class_names_need_only_the_data_yaml(tmp_path: Path) -> None:
    """A model's names come from its config's data.yaml, also where its images are gone."""
    (tmp_path / "data.yaml").write_text("train: images/train\nval: images/val\nnames: [cat, dog]\n")
    assert file_categories(tmp_path / "data.yaml") == {0: "cat", 1: "dog"}
    with pytest.raises(YOLOFormatError, match="'train' points to"):
        read_data_yaml(tmp_path / "data.yaml")
