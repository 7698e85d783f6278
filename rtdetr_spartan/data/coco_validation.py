"""Structure checks of a COCO annotation file, run once when a dataset is built.

A record with a missing or malformed field otherwise ends in a bare ``KeyError: 'bbox'`` (or a
tensor shape error) at the first batch, naming neither the file nor the record. ``coco_problems``
walks every image, category and annotation once and describes each bad one by its id and field;
``check_coco_structure`` raises one ``ValueError`` naming the file and the first few of them.

What is required (the fields training and COCOeval read):
  * images: an integer ``id`` (unique) and a non-empty ``file_name``; ``width`` / ``height``, when
    given, positive numbers (the size of the image as displayed, EXIF orientation applied);
  * categories: an integer ``id`` (unique);
  * annotations: an integer ``id`` (unique), the ``image_id`` of a listed image, a ``category_id``
    of a listed category and ``bbox`` ``[x, y, width, height]``: four numbers, in pixels.
    ``area`` and ``iscrowd``, when given, are numbers. Boxes of zero or negative size, or outside
    their image, are not errors: loading drops or clamps them (one warning per dataset).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["COCO_FORMAT_HINT", "check_coco_structure", "coco_problems", "structure_error"]

COCO_FORMAT_HINT = (
    "each annotation needs an integer 'id', the 'image_id' of an entry of 'images', a 'category_id' of an entry "
    "of 'categories' and 'bbox' [x, y, width, height] in pixels; each image an integer 'id' and a 'file_name'"
)

# Problems quoted in the error message; the rest are counted.
_QUOTED = 5
# The list of the file each kind of record is an entry of.
_LIST = {"image": "images", "category": "categories", "annotation": "annotations"}


# Exact types, so that a bool (an int subclass) is no number; JSON decodes to these only.
_NUMBER_TYPES = (int, float)
_FLAG_TYPES = (int, float, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _name(kind: str, index: int, record: Any) -> str:
    """``annotation 17`` by its id, or ``annotation entry 16`` (0-based) when the id is unusable."""
    if isinstance(record, dict) and _is_id(record.get("id")):
        return f"{kind} {record['id']}"
    return f"{kind} entry {index} of '{_LIST[kind]}'"


def _ids(records: list[Any], kind: str, problems: list[str]) -> set[int]:
    """The integer ids of ``records``; a record that is not an object, lacks an integer ``id``,
    or repeats one is a problem."""
    ids: set[int] = set()
    for index, record in enumerate(records):
        entry = f"{kind} entry {index} of '{_LIST[kind]}'"
        if not isinstance(record, dict):
            problems.append(f"{entry} is a {type(record).__name__}, expected an object")
        elif "id" not in record:
            problems.append(f"{entry} has no 'id'")
        elif not _is_id(record["id"]):
            problems.append(f"{entry} has 'id' {record['id']!r}, expected an integer")
        elif record["id"] in ids:
            problems.append(f"{kind} {record['id']} is listed twice (ids must be unique)")
        else:
            ids.add(record["id"])
    return ids


def _image_problems(images: list[Any], problems: list[str]) -> None:
    for index, image in enumerate(images):
        if not isinstance(image, dict):
            continue  # reported by _ids
        name = _name("image", index, image)
        file_name = image.get("file_name")
        if not isinstance(file_name, str) or not file_name:
            problems.append(f"{name} has no 'file_name'" if not file_name else f"{name}: 'file_name' is not a string")
        for key in ("width", "height"):
            value = image.get(key)
            if value is not None and (not _is_number(value) or value <= 0):
                problems.append(f"{name}: '{key}' is {value!r}, expected a positive number of pixels")


def _bbox_problem(bbox: Any) -> str | None:
    if not isinstance(bbox, (list, tuple)):
        return f"'bbox' is {bbox!r}, expected a list [x, y, width, height]"
    if len(bbox) != 4:
        return f"'bbox' {list(bbox)!r} has {len(bbox)} values, expected 4: [x, y, width, height]"
    if not all(_is_number(v) for v in bbox):
        return f"'bbox' {list(bbox)!r} holds a value that is not a number, expected [x, y, width, height]"
    return None


def _annotation_problem(ann: dict[str, Any], image_ids: set[int], category_ids: set[int]) -> str | None:
    """What is wrong with one annotation object (the first problem found), or None."""
    for key in ("image_id", "category_id", "bbox"):
        if key not in ann:
            return f"has no '{key}'"
    for key in ("image_id", "category_id"):
        if not _is_id(ann[key]):
            return f"has '{key}' {ann[key]!r}, expected an integer"
    if ann["image_id"] not in image_ids:
        return f"(image_id {ann['image_id']!r}) refers to an image that is not in 'images'"
    if ann["category_id"] not in category_ids:
        listed = sorted(category_ids)
        shown = f"{listed[:20]}{' ...' if len(listed) > 20 else ''}"
        return f"(image {ann['image_id']}) has category_id {ann['category_id']!r}, which is not in 'categories' {shown}"
    bbox = _bbox_problem(ann["bbox"])
    if bbox is not None:
        return bbox
    for key in ("area", "iscrowd"):
        if key in ann and not _is_number(ann[key]) and not isinstance(ann[key], bool):
            return f"'{key}' is {ann[key]!r}, expected a number"
    return None


def _well_formed(ann: dict[str, Any], image_ids: set[int], category_ids: set[int]) -> bool:
    """The usual, valid annotation in one expression: the fast path that keeps a large file
    (COCO train2017: 860k annotations) at a few seconds; anything else goes through
    :func:`_annotation_problem`."""
    try:
        x, y, w, h = ann["bbox"]
        return (
            type(ann["image_id"]) is int
            and ann["image_id"] in image_ids
            and type(ann["category_id"]) is int
            and ann["category_id"] in category_ids
            and type(x) in _NUMBER_TYPES
            and type(y) in _NUMBER_TYPES
            and type(w) in _NUMBER_TYPES
            and type(h) in _NUMBER_TYPES
            and type(ann.get("area", 0)) in _NUMBER_TYPES
            and type(ann.get("iscrowd", 0)) in _FLAG_TYPES
        )
    except (KeyError, TypeError, ValueError):
        return False


def _annotation_problems(
    annotations: list[Any], image_ids: set[int], category_ids: set[int], problems: list[str]
) -> None:
    for index, ann in enumerate(annotations):
        if not isinstance(ann, dict) or _well_formed(ann, image_ids, category_ids):
            continue  # not an object: reported by _ids
        problem = _annotation_problem(ann, image_ids, category_ids)
        if problem is not None:
            problems.append(f"{_name('annotation', index, ann)} {problem}")


def _lists(dataset: dict[str, Any], problems: list[str]) -> dict[str, list[Any]]:
    """The three record lists (a missing one is empty); a list that is something else is a problem."""
    lists: dict[str, list[Any]] = {}
    for key in ("images", "annotations", "categories"):
        value = dataset.get(key, [])
        if isinstance(value, list):
            lists[key] = value
        else:
            problems.append(f"'{key}' is a {type(value).__name__}, expected a list")
            lists[key] = []
    return lists


def coco_problems(dataset: Any) -> list[str]:
    """Every structural problem of a loaded COCO annotation dict, each naming the record (by id,
    else by its position) and the field; empty when the file is usable."""
    if not isinstance(dataset, dict):
        return [
            f"the file holds a {type(dataset).__name__}, expected an object with 'images', 'annotations' and 'categories'"
        ]
    problems: list[str] = []
    lists = _lists(dataset, problems)
    image_ids = _ids(lists["images"], "image", problems)
    category_ids = _ids(lists["categories"], "category", problems)
    _ids(lists["annotations"], "annotation", problems)
    _image_problems(lists["images"], problems)
    _annotation_problems(lists["annotations"], image_ids, category_ids, problems)
    return problems


def _summary(problems: Iterable[str]) -> str:
    problems = list(problems)
    quoted = "; ".join(problems[:_QUOTED])
    more = f" (and {len(problems) - _QUOTED} more)" if len(problems) > _QUOTED else ""
    return f"{len(problems)} invalid record{'s' if len(problems) != 1 else ''}: {quoted}{more}"


def structure_error(dataset: Any, ann_file: str | Path) -> ValueError | None:
    """The ``ValueError`` naming ``ann_file`` and its first bad records, or None when
    ``dataset`` (the file's loaded JSON) is a usable COCO detection file."""
    problems = coco_problems(dataset)
    return ValueError(f"{ann_file}: {_summary(problems)}; {COCO_FORMAT_HINT}") if problems else None


def check_coco_structure(dataset: Any, ann_file: str | Path) -> None:
    """Raise :func:`structure_error`'s error when ``dataset`` is not a usable COCO file."""
    error = structure_error(dataset, ann_file)
    if error is not None:
        raise error
