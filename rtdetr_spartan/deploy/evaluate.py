"""COCO box mAP of a predictor (onnxruntime, OpenVINO or PyTorch) on an annotation file and image folder.

Same dataset class, validation preprocessing (Resize, ToImage, ToDtype) and ``CocoEvaluator`` as
evaluation during training, so an exported model's numbers are comparable one to one.
Category ids: contiguous label ``i`` is the ``i``-th sorted category id of the annotation file,
or the COCO id of label ``i`` when the model was trained with ``remap_mscoco_category``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from rtdetr_spartan.data.coco import CocoDetection
from rtdetr_spartan.data.coco_eval import CocoEvaluator, to_category_ids
from rtdetr_spartan.data.dataloader import default_collate_fn
from rtdetr_spartan.data.transforms import Compose
from rtdetr_spartan.deploy.runtime import Predictor

__all__ = ["CategoryMismatchError", "evaluate_predictor", "validation_dataset"]

logger = logging.getLogger(__name__)


class CategoryMismatchError(ValueError):
    """The model's classes are not the annotation file's: its AP there would be meaningless 0."""


def validation_dataset(
    ann_file: str | Path, img_folder: str | Path, input_size: tuple[int, int], remap_mscoco_category: bool = False
) -> CocoDetection:
    """The dataset with the configs' validation transforms at ``input_size`` (H, W)."""
    ops: list[Mapping[str, Any]] = [
        {"type": "Resize", "size": [int(input_size[0]), int(input_size[1])]},
        {"type": "ToImage"},
        {"type": "ToDtype", "scale": True},
    ]
    return CocoDetection(img_folder, ann_file, transforms=Compose(ops), remap_mscoco_category=remap_mscoco_category)


def _check_mapping(predictor: Predictor, dataset: CocoDetection) -> None:
    """Warn when the model's stored category ids disagree with the annotation file's."""
    stored = predictor.info.label_to_category
    identity = all(k == v for k, v in stored.items())
    if stored and not identity and any(stored.get(k) != v for k, v in dataset.label_to_category.items()):
        logger.warning(
            "the model's metadata maps labels to category ids %s, but %s gives %s; using the annotation file's",
            dict(list(stored.items())[:5]),
            dataset.ann_file,
            dict(list(dataset.label_to_category.items())[:5]),
        )


def _check_class_names(predictor: Predictor, dataset: CocoDetection, file_names: dict[int, str]) -> None:
    """Warn when the model's class names (stored at export) differ from the annotation file's
    names of the same labels; raise when none is the same, i.e. the model was trained on other
    classes. Models exported without names (``class_<i>``) are not checked."""
    model_names = predictor.info.class_names
    if not model_names or all(name == f"class_{label}" for label, name in model_names.items()):
        return
    pairs = [
        (label, model_names[label], file_names[cid])
        for label, cid in sorted(dataset.label_to_category.items())
        if label in model_names and cid in file_names
    ]
    differing = [
        (label, ours, theirs) for label, ours, theirs in pairs if ours.strip().lower() != theirs.strip().lower()
    ]
    if not differing:
        return
    examples = "; ".join(f"label {label}: model {ours!r}, file {theirs!r}" for label, ours, theirs in differing[:5])
    if len(differing) == len(pairs):
        raise CategoryMismatchError(
            f"none of the model's {len(model_names)} class names matches the categories of {dataset.ann_file} "
            f"({examples}); evaluate on the annotation file of the classes the model was trained on"
        )
    logger.warning(
        "%d of %d class names of the model differ from %s (%s)", len(differing), len(pairs), dataset.ann_file, examples
    )


def _known_labels(
    labels: np.ndarray, boxes: np.ndarray, scores: np.ndarray, known: list[int]
) -> dict[str, torch.Tensor]:
    """One image's detections as tensors, without labels whose category the annotation file does
    not list (a model with more classes than the dataset); COCOeval ignores those anyway."""
    keep = np.isin(labels, known)
    return {
        "labels": torch.from_numpy(labels[keep]),
        "boxes": torch.from_numpy(boxes[keep]),
        "scores": torch.from_numpy(scores[keep]),
    }


def evaluate_predictor(
    predictor: Predictor,
    ann_file: str | Path,
    img_folder: str | Path,
    backend: str = "faster_coco_eval",
    batch_size: int = 4,
    num_workers: int = 0,
) -> CocoEvaluator:
    """Detect on every image of ``ann_file`` and return the summarized evaluator
    (``evaluator.stats``: the 12 COCO statistics, ``STAT_NAMES`` order).

    Raises :class:`CategoryMismatchError` when no class of the model is a category of the file
    (by id, or by name when the model stores class names); differing names are a warning.
    """
    dataset = validation_dataset(ann_file, img_folder, predictor.input_size, predictor.info.remap_mscoco_category)
    _check_mapping(predictor, dataset)
    if predictor.info.num_classes < len(dataset.label_to_category):
        raise ValueError(
            f"{ann_file} has {len(dataset.label_to_category)} categories but the model "
            f"predicts {predictor.info.num_classes} classes"
        )
    loader: DataLoader[Any] = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=default_collate_fn
    )
    evaluator = CocoEvaluator(dataset.coco, iou_types=("bbox",), backend=backend)
    listed = {int(c["id"]): str(c.get("name", c["id"])) for c in dataset.coco.dataset.get("categories", [])}
    known = [label for label, cid in dataset.label_to_category.items() if cid in listed]
    if not known:
        raise CategoryMismatchError(
            f"none of the model's category ids {sorted(set(dataset.label_to_category.values()))[:10]} is a "
            f"category of {ann_file} ({sorted(listed)[:10]}): its AP there would be 0"
        )
    _check_class_names(predictor, dataset, listed)
    for images, targets in tqdm(loader, desc="eval", unit="batch", leave=False):
        orig_sizes = torch.stack([t["orig_size"] for t in targets])
        labels, boxes, scores = predictor.run(images.numpy(), orig_sizes.numpy())
        predictions = {
            int(t["image_id"]): _known_labels(labels[i], boxes[i], scores[i], known) for i, t in enumerate(targets)
        }
        evaluator.update(to_category_ids(predictions, dataset.label_to_category))
    evaluator.synchronize_between_processes()
    evaluator.accumulate()
    evaluator.summarize()
    return evaluator
