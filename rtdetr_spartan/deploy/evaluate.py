"""COCO box mAP of a predictor (onnxruntime, OpenVINO or PyTorch) on an annotation file and image folder.

Same dataset class, validation preprocessing (Resize, ToImage, ToDtype) and ``CocoEvaluator`` as
evaluation during training, so an exported model's numbers are comparable one to one.
Category ids: the model's contiguous label ``i`` is scored as the category id the model stores
for it (export metadata), so a validation file holding a subset of the model's categories is
scored correctly; a file category the model does not know is an error. Only a model stored
without ids (identity ids named ``class_<i>``) takes the file's: label ``i`` is its ``i``-th
sorted category id.
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
from rtdetr_spartan.data.layouts import detection_dataset
from rtdetr_spartan.data.transforms import Compose
from rtdetr_spartan.deploy.metadata import ModelInfo
from rtdetr_spartan.deploy.predictor import Predictor

__all__ = ["CategoryMismatchError", "evaluate_predictor", "evaluation_mapping", "validation_dataset"]

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
    # CocoDetection, or YOLODetection for a YOLO data.yaml
    return detection_dataset(img_folder, ann_file, transforms=Compose(ops), remap_mscoco_category=remap_mscoco_category)


def _carries_category_ids(info: ModelInfo, annotated: set[int]) -> bool:
    """Whether the model stores its own label -> category id mapping. A config without an
    annotation file exports identity ids with placeholder names ``class_<i>``: no mapping; nor
    is an identity mapping that the file's annotated ids fall outside of (ids 0..N-1 that cannot
    be the file's are a placeholder too)."""
    stored = info.label_to_category
    if not stored:
        return False
    if any(label != cid for label, cid in stored.items()):
        return True
    placeholders = all(name == f"class_{label}" for label, name in info.class_names.items())
    return not placeholders and annotated <= set(stored.values())


def evaluation_mapping(info: ModelInfo, dataset: CocoDetection) -> dict[int, int]:
    """Label -> category id to score the model's detections on ``dataset`` with: the model's
    stored ids when it carries them (:func:`_carries_category_ids`), else the file's contiguous
    mapping.

    Raises :class:`CategoryMismatchError` when the file has annotated categories the model's
    stored ids do not include (their objects could only be misses)."""
    annotated = {int(cid) for cid, images in dataset.coco.catToImgs.items() if images}
    if not _carries_category_ids(info, annotated):
        if info.num_classes < len(dataset.label_to_category):
            raise CategoryMismatchError(
                f"{dataset.ann_file} has {len(dataset.label_to_category)} categories but the model predicts "
                f"{info.num_classes} classes"
            )
        return dict(dataset.label_to_category)
    stored = dict(info.label_to_category)
    unknown = sorted(annotated - set(stored.values()))
    if unknown:
        names = {int(c["id"]): c.get("name") for c in dataset.coco.dataset.get("categories", [])}
        listed = ", ".join(f"{cid} ({names.get(cid)!r})" for cid in unknown[:10])
        raise CategoryMismatchError(
            f"{dataset.ann_file} has annotated categories the model does not know: {listed}; the model's "
            f"category ids are {sorted(stored.values())[:20]}. Evaluate on a file of the model's categories, "
            f"or drop those categories and their annotations"
        )
    if any(stored.get(label) != cid for label, cid in dataset.label_to_category.items()):
        logger.info(
            "scoring label -> category id by the model's stored mapping %s (the file's own order would give %s)",
            dict(list(stored.items())[:5]),
            dict(list(dataset.label_to_category.items())[:5]),
        )
    return stored


def _check_class_names(
    predictor: Predictor, dataset: CocoDetection, mapping: dict[int, int], file_names: dict[int, str]
) -> None:
    """Warn when the model's class names (stored at export) differ from the annotation file's
    names of the same labels; raise when none is the same, i.e. the model was trained on other
    classes. Models exported without names (``class_<i>``) are not checked."""
    model_names = predictor.info.class_names
    if not model_names or all(name == f"class_{label}" for label, name in model_names.items()):
        return
    pairs = [
        (label, model_names[label], file_names[cid])
        for label, cid in sorted(mapping.items())
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

    Labels are scored as the category ids the model stores (:func:`evaluation_mapping`).
    Raises :class:`CategoryMismatchError` when no class of the model is a category of the file
    (by id, or by name when the model stores class names) or when the file has annotated
    categories the model does not know; differing names are a warning. ``batch_size`` < 1 or
    ``num_workers`` < 0 raise ``ValueError``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer (images per run), got {batch_size!r}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be an integer >= 0 (0: load in this process), got {num_workers!r}")
    dataset = validation_dataset(ann_file, img_folder, predictor.input_size, predictor.info.remap_mscoco_category)
    mapping = evaluation_mapping(predictor.info, dataset)
    loader: DataLoader[Any] = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=default_collate_fn
    )
    evaluator = CocoEvaluator(dataset.coco, iou_types=("bbox",), backend=backend)
    listed = {int(c["id"]): str(c.get("name", c["id"])) for c in dataset.coco.dataset.get("categories", [])}
    known = [label for label, cid in mapping.items() if cid in listed]
    if not known:
        raise CategoryMismatchError(
            f"none of the model's category ids {sorted(set(mapping.values()))[:10]} is a "
            f"category of {ann_file} ({sorted(listed)[:10]}): its AP there would be 0"
        )
    _check_class_names(predictor, dataset, mapping, listed)
    for images, targets in tqdm(loader, desc="eval", unit="batch", leave=False):
        orig_sizes = torch.stack([t["orig_size"] for t in targets])
        labels, boxes, scores = predictor.run(images.numpy(), orig_sizes.numpy())
        predictions = {
            int(t["image_id"]): _known_labels(labels[i], boxes[i], scores[i], known) for i, t in enumerate(targets)
        }
        evaluator.update(to_category_ids(predictions, mapping))
    evaluator.synchronize_between_processes()
    evaluator.accumulate()
    evaluator.summarize()
    return evaluator
