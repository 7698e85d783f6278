"""The quickstart's configs: generated-data paths, pretrained backbone, learning rate, input size."""

from __future__ import annotations

from pathlib import Path

import pytest

from rtdetr_spartan.pipeline.settings import QuickstartSettings, default_settings, fast_settings
from rtdetr_spartan.pipeline.training import detector_config

REPO_ROOT = Path(__file__).resolve().parents[2]
DETECTION_CONFIG = REPO_ROOT / "configs" / "rtdetr" / "rtdetr_spartan_t_shapes.yml"
PRETRAIN_CONFIG = REPO_ROOT / "configs" / "spartan" / "spartan_t_shapes_cls.yml"


def _settings(tmp_path: Path, fast: bool = False) -> QuickstartSettings:
    make = fast_settings if fast else default_settings
    return make(tmp_path / "out", tmp_path / "data", DETECTION_CONFIG, PRETRAIN_CONFIG)


def test_detector_config_points_at_the_generated_set_and_the_pretrained_backbone(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    cfg = detector_config(settings, tmp_path / "cls" / "best.pth").yaml_cfg
    root = settings.detection_data
    assert cfg["train_dataloader"]["dataset"]["img_folder"] == str(root / "train")
    assert cfg["val_dataloader"]["dataset"]["ann_file"] == str(root / "annotations" / "instances_val.json")
    assert cfg["SpaRTAN"]["pretrained"] == str(tmp_path / "cls" / "best.pth")
    assert cfg["epochs"] == settings.detector_epochs and cfg["output_dir"] == str(settings.output_dir / "detector")


def test_detector_lr_overrides_the_config_unless_none(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    assert detector_config(settings, None).yaml_cfg["optimizer"]["lr"] == pytest.approx(4e-4)
    from_config = detector_config(settings.replace(detector_lr=None), None).yaml_cfg
    assert from_config["optimizer"]["lr"] == pytest.approx(8e-4)  # the from-scratch recipe
    assert from_config["SpaRTAN"]["pretrained"] is None


def test_fast_settings_resize_the_detector_input(tmp_path: Path) -> None:
    cfg = detector_config(_settings(tmp_path, fast=True), None).yaml_cfg
    assert cfg["HybridEncoder"]["eval_spatial_size"] == [96, 96]
    assert cfg["RTDETRTransformer"]["eval_spatial_size"] == [96, 96]
    resize = [op for op in cfg["val_dataloader"]["dataset"]["transforms"]["ops"] if op["type"] == "Resize"]
    assert resize and all(op["size"] == [96, 96] for op in resize)
    assert cfg["train_dataloader"]["batch_size"] == 8
    with pytest.raises(ValueError, match="multiple of 32"):
        detector_config(_settings(tmp_path).replace(detector_input_size=100), None)
