"""Category ids and labels: the 80 MS-COCO 2017 detection categories, and the contiguous mapping
of any dataset's own ids.

COCO numbers its 80 object categories 1..90 with gaps (ids dropped before release); detectors
predict a contiguous label 0..79 and results are reported with the category id.
``MSCOCO_CATEGORIES`` lists ``(category_id, name)`` in label order, so label ``i`` is entry ``i``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

__all__ = [
    "MSCOCO_CATEGORIES",
    "MSCOCO_CATEGORY_TO_LABEL",
    "MSCOCO_CATEGORY_TO_NAME",
    "MSCOCO_LABEL_TO_CATEGORY",
    "MSCOCO_LABEL_TO_NAME",
    "contiguous_mapping",
    "file_categories",
    "label_to_category_table",
]

# (category id, name), in contiguous-label order.
MSCOCO_CATEGORIES: tuple[tuple[int, str], ...] = (
    (1, "person"),
    (2, "bicycle"),
    (3, "car"),
    (4, "motorcycle"),
    (5, "airplane"),
    (6, "bus"),
    (7, "train"),
    (8, "truck"),
    (9, "boat"),
    (10, "traffic light"),
    (11, "fire hydrant"),
    (13, "stop sign"),
    (14, "parking meter"),
    (15, "bench"),
    (16, "bird"),
    (17, "cat"),
    (18, "dog"),
    (19, "horse"),
    (20, "sheep"),
    (21, "cow"),
    (22, "elephant"),
    (23, "bear"),
    (24, "zebra"),
    (25, "giraffe"),
    (27, "backpack"),
    (28, "umbrella"),
    (31, "handbag"),
    (32, "tie"),
    (33, "suitcase"),
    (34, "frisbee"),
    (35, "skis"),
    (36, "snowboard"),
    (37, "sports ball"),
    (38, "kite"),
    (39, "baseball bat"),
    (40, "baseball glove"),
    (41, "skateboard"),
    (42, "surfboard"),
    (43, "tennis racket"),
    (44, "bottle"),
    (46, "wine glass"),
    (47, "cup"),
    (48, "fork"),
    (49, "knife"),
    (50, "spoon"),
    (51, "bowl"),
    (52, "banana"),
    (53, "apple"),
    (54, "sandwich"),
    (55, "orange"),
    (56, "broccoli"),
    (57, "carrot"),
    (58, "hot dog"),
    (59, "pizza"),
    (60, "donut"),
    (61, "cake"),
    (62, "chair"),
    (63, "couch"),
    (64, "potted plant"),
    (65, "bed"),
    (67, "dining table"),
    (70, "toilet"),
    (72, "tv"),
    (73, "laptop"),
    (74, "mouse"),
    (75, "remote"),
    (76, "keyboard"),
    (77, "cell phone"),
    (78, "microwave"),
    (79, "oven"),
    (80, "toaster"),
    (81, "sink"),
    (82, "refrigerator"),
    (84, "book"),
    (85, "clock"),
    (86, "vase"),
    (87, "scissors"),
    (88, "teddy bear"),
    (89, "hair drier"),
    (90, "toothbrush"),
)

MSCOCO_LABEL_TO_CATEGORY: dict[int, int] = {label: cid for label, (cid, _) in enumerate(MSCOCO_CATEGORIES)}
MSCOCO_CATEGORY_TO_LABEL: dict[int, int] = {cid: label for label, cid in MSCOCO_LABEL_TO_CATEGORY.items()}
MSCOCO_LABEL_TO_NAME: dict[int, str] = {label: name for label, (_, name) in enumerate(MSCOCO_CATEGORIES)}
MSCOCO_CATEGORY_TO_NAME: dict[int, str] = dict(MSCOCO_CATEGORIES)


def label_to_category_table(device: torch.device | None = None) -> torch.Tensor:
    """[80] int64 lookup tensor: ``table[label]`` is the COCO category id."""
    return torch.tensor([cid for cid, _ in MSCOCO_CATEGORIES], dtype=torch.int64, device=device)


def contiguous_mapping(category_ids: list[int] | tuple[int, ...]) -> tuple[dict[int, int], dict[int, int]]:
    """Map a dataset's own category ids to labels 0..N-1 in sorted id order.

    Returns ``(category_to_label, label_to_category)``. Duplicate ids raise ``ValueError``.
    """
    ids = sorted(int(c) for c in category_ids)
    if len(set(ids)) != len(ids):
        dupes = sorted({c for c in ids if ids.count(c) > 1})
        raise ValueError(f"duplicate category ids {dupes}")
    category_to_label = {cid: label for label, cid in enumerate(ids)}
    label_to_category = {label: cid for cid, label in category_to_label.items()}
    return category_to_label, label_to_category


def file_categories(ann_file: str | Path) -> dict[int, str]:
    """``{category id: name}`` of a dataset's annotation file: a COCO JSON file's ``categories``,
    or a YOLO ``data.yaml``'s ``names`` (category id = class id)."""
    ann_file = Path(ann_file)
    if ann_file.suffix.lower() in (".yaml", ".yml"):
        from rtdetr_spartan.data.yolo import read_data_yaml  # yolo imports coco, which imports this module

        return dict(enumerate(read_data_yaml(ann_file, required=("names",), resolve_splits=False).names))
    categories = json.loads(ann_file.read_text()).get("categories", [])
    return {int(c["id"]): str(c.get("name", c["id"])) for c in categories}
