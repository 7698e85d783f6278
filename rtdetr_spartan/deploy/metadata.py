"""What an exported model needs to be used on its own: input size, classes, category ids.

The exporter writes a :class:`ModelInfo` into the ONNX file's ``metadata_props`` (string key,
string value; structured values as JSON), and the runtime reads it back, so an ``.onnx`` file
alone is enough to run, label and COCO-evaluate detections.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from rtdetr_spartan import __version__
from rtdetr_spartan.data.categories import (
    MSCOCO_CATEGORY_TO_NAME,
    MSCOCO_LABEL_TO_CATEGORY,
    contiguous_mapping,
    file_categories,
)

__all__ = ["ModelInfo", "categories_from_config", "input_size_from_config"]

logger = logging.getLogger(__name__)

PREPROCESSING = "RGB, resize to input_size (bilinear, antialiased), float32 in [0, 1], no mean/std"


@dataclass
class ModelInfo:
    """Metadata of an exported detector.

    ``input_size`` is (height, width) the model was exported at (the only size it accepts unless
    ``dynamic_size``). ``label_to_category`` / ``class_names`` are keyed by contiguous label.
    """

    input_size: tuple[int, int]
    num_classes: int
    label_to_category: dict[int, int]
    class_names: dict[int, str]
    remap_mscoco_category: bool = False
    dynamic_batch: bool = True
    dynamic_size: bool = False
    extra: dict[str, str] = field(default_factory=dict)

    def category_id(self, label: int) -> int:
        return self.label_to_category.get(label, label)

    def class_name(self, label: int) -> str:
        return self.class_names.get(label, f"class_{label}")

    def to_metadata(self) -> dict[str, str]:
        """String key/value pairs for ONNX ``metadata_props``."""
        props = {
            "producer": f"rtdetr-spartan {__version__}",
            "input_size": json.dumps(list(self.input_size)),
            "num_classes": str(self.num_classes),
            "label_to_category": json.dumps({str(k): v for k, v in sorted(self.label_to_category.items())}),
            "class_names": json.dumps({str(k): v for k, v in sorted(self.class_names.items())}),
            "remap_mscoco_category": json.dumps(self.remap_mscoco_category),
            "dynamic_batch": json.dumps(self.dynamic_batch),
            "dynamic_size": json.dumps(self.dynamic_size),
            "preprocessing": PREPROCESSING,
            "outputs": "labels [N, K] int64 contiguous; boxes [N, K, 4] XYXY pixels of orig_target_sizes; "
            "scores [N, K]",
        }
        props.update(self.extra)
        return props

    @classmethod
    def from_metadata(cls, props: Mapping[str, str], source: str = "<model>") -> ModelInfo:
        """Parse ``metadata_props``; ``source`` (the file) is named in errors."""
        missing = [k for k in ("input_size", "num_classes") if k not in props]
        if missing:
            raise ValueError(f"{source}: metadata lacks {missing}; was it exported by rtdetr_spartan?")
        try:
            height, width = (int(v) for v in json.loads(props["input_size"]))
            num_classes = int(props["num_classes"])
            label_to_category = {int(k): int(v) for k, v in json.loads(props.get("label_to_category", "{}")).items()}
            names = {int(k): str(v) for k, v in json.loads(props.get("class_names", "{}")).items()}
            flags = {
                k: bool(json.loads(props.get(k, "false")))
                for k in ("remap_mscoco_category", "dynamic_batch", "dynamic_size")
            }
        except (ValueError, TypeError) as err:
            raise ValueError(f"{source}: malformed metadata ({err})") from err
        known = {"input_size", "num_classes", "label_to_category", "class_names", *flags}
        extra = {k: v for k, v in props.items() if k not in known}
        return cls((height, width), num_classes, label_to_category, names, extra=extra, **flags)


def _val_ann_file(cfg: Mapping[str, Any]) -> Path | None:
    dataset = (cfg.get("val_dataloader") or {}).get("dataset") or {}
    ann = dataset.get("ann_file") if isinstance(dataset, Mapping) else None
    return Path(ann) if ann else None


def categories_from_config(cfg: Mapping[str, Any]) -> tuple[dict[int, int], dict[int, str]]:
    """``(label_to_category, class_names)`` for the model a config describes.

    With ``remap_mscoco_category`` the 80 COCO classes; else the sorted categories of the
    validation annotation file when it exists; else identity ids named ``class_<i>``.
    """
    num_classes = int(cfg.get("num_classes", 80))
    if cfg.get("remap_mscoco_category", False):
        names = {label: MSCOCO_CATEGORY_TO_NAME[cid] for label, cid in MSCOCO_LABEL_TO_CATEGORY.items()}
        return dict(MSCOCO_LABEL_TO_CATEGORY), names
    ann_file = _val_ann_file(cfg)
    if ann_file is not None and ann_file.is_file():
        categories = file_categories(ann_file)  # COCO JSON, or a YOLO data.yaml
        if 0 < len(categories) <= num_classes:
            _, label_to_category = contiguous_mapping(list(categories))
            return label_to_category, {k: categories[v] for k, v in label_to_category.items()}
        logger.warning(
            "%s has %d categories for num_classes=%d; using identity category ids",
            ann_file,
            len(categories),
            num_classes,
        )
    return {i: i for i in range(num_classes)}, {i: f"class_{i}" for i in range(num_classes)}


def input_size_from_config(cfg: Mapping[str, Any], default: int = 640) -> tuple[int, int]:
    """(height, width) the model is evaluated at: ``eval_spatial_size`` (top level, then the
    decoder or encoder section), else ``(default, default)``."""
    for section in (cfg, cfg.get("RTDETRTransformer") or {}, cfg.get("HybridEncoder") or {}):
        size = section.get("eval_spatial_size") if isinstance(section, Mapping) else None
        if size:
            height, width = (int(v) for v in size)
            return height, width
    return default, default
