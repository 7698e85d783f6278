"""Data: COCO and YOLO detection datasets (with their file checks), dataset layouts recognised in a
directory (``layouts.detect_layout``) and category mapping, detection
transforms, loaders, generated shapes datasets, the COCO evaluator, ImageFolder classification
data, and the one image reader (``image_io.read_rgb``) every dataset and predictor uses.
Importing the package registers its config names."""

from rtdetr_spartan.data import (
    categories,
    classification,
    coco,
    coco_eval,
    coco_validation,
    dataloader,
    image_io,
    layouts,
    shapes,
    transforms,
    yolo,
)
from rtdetr_spartan.data.coco import CocoDetection, ImageReadError
from rtdetr_spartan.data.coco_eval import CocoEvaluator, to_category_ids
from rtdetr_spartan.data.dataloader import BatchImageCollateFunction, DataLoader, default_collate_fn, set_epoch
from rtdetr_spartan.data.layouts import DatasetLayout, DatasetLayoutError, detect_layout
from rtdetr_spartan.data.transforms import Compose
from rtdetr_spartan.data.yolo import YOLODetection, YOLOFormatError

__all__ = [
    "categories",
    "classification",
    "coco",
    "coco_eval",
    "coco_validation",
    "dataloader",
    "image_io",
    "layouts",
    "shapes",
    "transforms",
    "yolo",
    "CocoDetection",
    "ImageReadError",
    "CocoEvaluator",
    "to_category_ids",
    "BatchImageCollateFunction",
    "DataLoader",
    "default_collate_fn",
    "set_epoch",
    "Compose",
    "DatasetLayout",
    "DatasetLayoutError",
    "detect_layout",
    "YOLODetection",
    "YOLOFormatError",
]
