"""Shared fixtures for the data tests: a small generated shapes dataset, in the COCO, YOLO and
Roboflow layouts."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from rtdetr_spartan.data.shapes import make_detection_dataset, make_yolo_dataset


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``root/{train,val}/*.jpg`` and ``root/annotations/instances_{train,val}.json``."""
    root = tmp_path_factory.mktemp("shapes")
    make_detection_dataset(root, train=16, val=8, size=96, seed=0)
    return root


@pytest.fixture(scope="session")
def yolo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same images as ``shapes_root`` in the YOLO layout: ``root/data.yaml``,
    ``root/images/{train,val}/*.jpg`` and ``root/labels/{train,val}/*.txt``."""
    root = tmp_path_factory.mktemp("shapes_yolo")
    make_yolo_dataset(root, train=16, val=8, size=96, seed=0)
    return root


@pytest.fixture(scope="session")
def roboflow_root(shapes_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``shapes_root`` as a Roboflow COCO export: ``root/{train,valid}/`` each with its images and
    ``_annotations.coco.json``."""
    root = tmp_path_factory.mktemp("shapes_roboflow")
    for split, folder in (("train", "train"), ("val", "valid")):
        shutil.copytree(shapes_root / split, root / folder)
        shutil.copy(shapes_root / "annotations" / f"instances_{split}.json", root / folder / "_annotations.coco.json")
    return root
