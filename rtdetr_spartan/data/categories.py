"""The 80 MS-COCO detection categories and their mapping to contiguous labels.

COCO numbers its 80 object categories 1..90 with gaps; models predict contiguous labels 0..79.
``MSCOCO_CATEGORIES`` lists ``(category_id, name)`` in id order, so label ``i`` is entry ``i``;
it is the table of :mod:`rtdetr_spartan.zoo.rtdetr.coco_categories`.
"""

from __future__ import annotations

from rtdetr_spartan.zoo.rtdetr.coco_categories import COCO_CATEGORIES

# One table for the whole project: the postprocessor's.
MSCOCO_CATEGORIES: tuple[tuple[int, str], ...] = COCO_CATEGORIES

MSCOCO_CATEGORY_TO_NAME: dict[int, str] = dict(MSCOCO_CATEGORIES)
MSCOCO_CATEGORY_TO_LABEL: dict[int, int] = {cid: i for i, (cid, _) in enumerate(MSCOCO_CATEGORIES)}
MSCOCO_LABEL_TO_CATEGORY: dict[int, int] = {i: cid for cid, i in MSCOCO_CATEGORY_TO_LABEL.items()}


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
