"""Dataset layouts recognised in a directory, and the overrides that point a config at one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from rtdetr_spartan.core import YAMLConfig
from rtdetr_spartan.data.classification import ImageFolderDataset
from rtdetr_spartan.data.coco import CocoDetection
from rtdetr_spartan.data.layouts import (
    DatasetLayoutError,
    classification_overrides,
    detect_layout,
    detection_dataset,
    detection_overrides,
)
from rtdetr_spartan.data.shapes import make_classification_dataset
from rtdetr_spartan.data.yolo import YOLODetection, YOLOFormatError
from rtdetr_spartan.deploy.evaluate import validation_dataset
from rtdetr_spartan.deploy.metadata import ModelInfo
from rtdetr_spartan.deploy.quantize import calibration_from_config

REPO_ROOT = Path(__file__).resolve().parents[2]
SHAPES_CONFIG = REPO_ROOT / "configs" / "rtdetr" / "rtdetr_spartan_t_shapes.yml"
COCO_CONFIG_TOP = REPO_ROOT / "configs" / "dataset" / "coco_detection.yml"
CLS_CONFIG = REPO_ROOT / "configs" / "spartan" / "spartan_t_shapes_cls.yml"
SHAPE_NAMES = ["square", "circle", "triangle", "star"]


def test_coco_layout(shapes_root: Path) -> None:
    layout = detect_layout(shapes_root)
    assert (layout.kind, layout.names, layout.num_classes, layout.test) == ("coco", SHAPE_NAMES, 4, None)
    assert layout.train.img_folder == shapes_root / "train"
    assert layout.val.ann_file == shapes_root / "annotations" / "instances_val.json"


def test_coco_2017_folder_names(tmp_path: Path, shapes_root: Path) -> None:
    (tmp_path / "annotations").mkdir()
    (tmp_path / "images" / "val2017").mkdir(parents=True)
    (tmp_path / "train2017").mkdir()
    for split in ("train", "val"):
        shutil.copy(shapes_root / "annotations" / f"instances_{split}.json", tmp_path / "annotations")
        (tmp_path / "annotations" / f"instances_{split}.json").rename(
            tmp_path / "annotations" / f"instances_{split}2017.json"
        )
    layout = detect_layout(tmp_path)
    assert layout.train.img_folder == tmp_path / "train2017"
    assert layout.val.img_folder == tmp_path / "images" / "val2017"


def test_coco_layout_without_image_folder(tmp_path: Path, shapes_root: Path) -> None:
    shutil.copytree(shapes_root / "annotations", tmp_path / "annotations")
    (tmp_path / "train").mkdir()
    with pytest.raises(DatasetLayoutError, match=r"no image folder for it; looked for val/, images/val/"):
        detect_layout(tmp_path)


def test_roboflow_layout(roboflow_root: Path) -> None:
    layout = detect_layout(roboflow_root)
    assert (layout.kind, layout.names) == ("roboflow", SHAPE_NAMES)
    assert layout.val.img_folder == roboflow_root / "valid"
    assert layout.val.ann_file == roboflow_root / "valid" / "_annotations.coco.json"


def test_roboflow_layout_without_validation_split(tmp_path: Path, roboflow_root: Path) -> None:
    shutil.copytree(roboflow_root / "train", tmp_path / "train")
    with pytest.raises(DatasetLayoutError, match="no validation split; looked for valid/_annotations.coco.json"):
        detect_layout(tmp_path)


def test_yolo_layout_from_folder_or_data_yaml(yolo_root: Path) -> None:
    for path in (yolo_root, yolo_root / "data.yaml"):
        layout = detect_layout(path)
        assert (layout.kind, layout.names, layout.root) == ("yolo", SHAPE_NAMES, yolo_root)
        assert layout.train.img_folder == (yolo_root / "images" / "train",)
        assert layout.val.ann_file == yolo_root / "data.yaml"


def test_yolo_layout_with_a_missing_key(tmp_path: Path) -> None:
    (tmp_path / "data.yaml").write_text("train: images\nnames: [a]\n")
    with pytest.raises(YOLOFormatError, match=r"data.yaml: missing key 'val'"):
        detect_layout(tmp_path)


def test_unknown_layout_lists_what_was_looked_for(tmp_path: Path) -> None:
    (tmp_path / "pictures").mkdir()
    with pytest.raises(DatasetLayoutError) as info:
        detect_layout(tmp_path)
    message = str(info.value)
    for looked_for in ("annotations/instances_train*.json", "train/_annotations.coco.json", "data.yaml", "pictures"):
        assert looked_for in message
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        detect_layout(tmp_path / "nowhere")


@pytest.mark.parametrize("fixture", ["shapes_root", "roboflow_root", "yolo_root"])
def test_overrides_build_the_dataset_and_keep_the_transforms(fixture: str, request: pytest.FixtureRequest) -> None:
    layout = detect_layout(request.getfixturevalue(fixture))
    cfg = YAMLConfig(SHAPES_CONFIG, **detection_overrides(layout))
    dataset = cfg.build("val_dataloader").dataset
    assert type(dataset) is (YOLODetection if layout.kind == "yolo" else CocoDetection)
    assert [dataset.category_names[i] for i in range(4)] == SHAPE_NAMES and len(dataset) == 8
    image, target = dataset[0]
    assert image.shape == (3, 160, 160)  # the config's Resize/ToImage ran


def test_overrides_replace_the_coco_80_class_settings(yolo_root: Path, tmp_path: Path) -> None:
    config = tmp_path / "coco.yml"
    config.write_text(f"__include__: ['{COCO_CONFIG_TOP}']\n")
    cfg = YAMLConfig(config, **detection_overrides(detect_layout(yolo_root)))
    assert (cfg.yaml_cfg["num_classes"], cfg.yaml_cfg["remap_mscoco_category"]) == (4, False)
    dataset = cfg.yaml_cfg["train_dataloader"]["dataset"]
    assert dataset["type"] == "YOLODetection" and dataset["ann_file"] == str(yolo_root / "data.yaml")
    assert dataset["img_folder"] == str(yolo_root / "images" / "train")


def test_roboflow_names_come_from_the_file(tmp_path: Path, roboflow_root: Path) -> None:
    shutil.copytree(roboflow_root, tmp_path / "ds")
    ann_file = tmp_path / "ds" / "train" / "_annotations.coco.json"
    data = json.loads(ann_file.read_text())
    data["categories"] = [{"id": 0, "name": "shapes"}, *data["categories"]]  # Roboflow's dataset-named class
    ann_file.write_text(json.dumps(data))
    layout = detect_layout(tmp_path / "ds")
    assert layout.names == ["shapes", *SHAPE_NAMES] and detection_overrides(layout)["num_classes"] == 5


@pytest.fixture(scope="module")
def classification_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes_cls")
    make_classification_dataset(root, train=8, val=4, size=32)
    return root


def test_classification_overrides(classification_root: Path) -> None:
    overrides = classification_overrides(classification_root)
    assert overrides["num_classes"] == 4
    cfg = YAMLConfig(CLS_CONFIG, **overrides)
    dataset = cfg.build("val_dataloader").dataset
    assert isinstance(dataset, ImageFolderDataset) and dataset.classes == sorted(SHAPE_NAMES)
    assert len(dataset) == 4


def test_classification_split_class_folders_must_match(tmp_path: Path, classification_root: Path) -> None:
    shutil.copytree(classification_root, tmp_path / "ds")
    shutil.rmtree(tmp_path / "ds" / "val" / "circle")
    with pytest.raises(DatasetLayoutError, match="must hold the same class folders.*circle"):
        classification_overrides(tmp_path / "ds")
    with pytest.raises(DatasetLayoutError, match="looked for train/<class>/"):
        classification_overrides(tmp_path / "ds" / "train")


def test_detection_dataset_reads_either_annotation_kind(shapes_root: Path, yolo_root: Path) -> None:
    yolo = detection_dataset(yolo_root / "images" / "val", yolo_root / "data.yaml", num_classes=4)
    coco = detection_dataset(shapes_root / "val", shapes_root / "annotations" / "instances_val.json")
    assert type(yolo) is YOLODetection and type(coco) is CocoDetection
    assert len(yolo) == len(coco) == 8
    with pytest.raises(ValueError, match="a COCO dataset reads one image folder"):
        detection_dataset([str(shapes_root / "val")], shapes_root / "annotations" / "instances_val.json")


def test_calibration_and_exported_model_evaluation_read_a_yolo_config(yolo_root: Path) -> None:
    """INT8 calibration and tools/eval_onnx.py read the dataset section of a config trained on
    YOLO data (ann_file: data.yaml) rather than building it from the config."""
    cfg = YAMLConfig(SHAPES_CONFIG, **detection_overrides(detect_layout(yolo_root))).yaml_cfg
    names = dict(enumerate(SHAPE_NAMES))
    info = ModelInfo((160, 160), 4, {i: i for i in range(4)}, names)
    files = calibration_from_config(cfg, info, subset=100)
    assert sorted(files) == sorted((yolo_root / "images" / "val").glob("*.jpg"))
    section = cfg["val_dataloader"]["dataset"]
    dataset = validation_dataset(section["ann_file"], section["img_folder"], (160, 160))
    assert isinstance(dataset, YOLODetection) and dataset[0][0].shape == (3, 160, 160)
