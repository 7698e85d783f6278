"""YOLO-format detection data read directly: ``data.yaml`` plus ``labels/*.txt`` next to ``images/``.

``data.yaml`` (the Ultralytics format) names the class list and the splits::

    path: .                 # optional dataset root; relative to the data.yaml's folder
    train: images/train     # a folder of images, a .txt file listing images, or a list of those
    val: images/val
    test: images/test       # optional
    names: [cat, dog]       # or {0: cat, 1: dog}; ``nc``, when present, must equal their count

Each image ``.../images/<rest>/x.jpg`` has its labels in ``.../labels/<rest>/x.txt`` (the last
``images`` folder of the path becomes ``labels``, so both ``images/train`` + ``labels/train``
and ``train/images`` + ``train/labels`` work), one object per line: ``class cx cy w h``
normalized to [0, 1] by the image's width and height, or a polygon ``class x1 y1 x2 y2 ...``
(its bounding box is used). An empty label file is an image without objects; an image without a
label file is one too, with one warning giving their count.

:class:`YOLODetection` is a :class:`~rtdetr_spartan.data.coco.CocoDetection` whose COCO object is
built in memory from the labels (category id = YOLO class id, 0..N-1), so items, targets,
transforms and COCO evaluation are those of a COCO dataset and nothing is written next to the
user's data.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml
from PIL import Image, UnidentifiedImageError

from rtdetr_spartan.core import register
from rtdetr_spartan.data.coco import CocoDetection, ImageReadError, in_memory_coco

__all__ = [
    "IMAGE_SUFFIXES",
    "YOLODataConfig",
    "YOLODetection",
    "YOLOFormatError",
    "coco_dict",
    "image_size",
    "label_path",
    "read_data_yaml",
    "read_label_file",
    "split_images",
]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES: tuple[str, ...] = (".bmp", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp")
# Labels written with 6 decimals, or by tools that round edges, overshoot [0, 1] by ~1e-6; a box
# edge further out than this is a wrong label, not rounding.
BOX_TOLERANCE = 1e-3
_ROTATED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height
_EXIF_ORIENTATION = 0x0112


class YOLOFormatError(ValueError):
    """A ``data.yaml`` or label file that does not follow the YOLO format; the message names the
    file (and line) and says what is expected."""


@dataclass(frozen=True)
class YOLODataConfig:
    """A parsed ``data.yaml``: its path, the dataset root, class names in id order, and each split's
    image sources (folders or .txt lists, resolved)."""

    path: Path
    root: Path
    names: tuple[str, ...]
    splits: dict[str, tuple[Path, ...]]


# ----------------------------------------------------------------------------- data.yaml
def _parse_names(value: Any, path: Path) -> tuple[str, ...]:
    """``names`` as a list, or a dict ``{id: name}`` whose ids are exactly 0..N-1."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        names = tuple(str(n) for n in value)
    elif isinstance(value, dict):
        try:
            by_id = {int(k): str(v) for k, v in value.items()}
        except (TypeError, ValueError):
            raise YOLOFormatError(f"{path}: 'names' keys must be integer class ids, got {list(value)}") from None
        if sorted(by_id) != list(range(len(by_id))):
            raise YOLOFormatError(f"{path}: 'names' ids must be 0..{len(by_id) - 1} without gaps, got {sorted(by_id)}")
        names = tuple(by_id[i] for i in range(len(by_id)))
    else:
        raise YOLOFormatError(
            f"{path}: 'names' must be a list of class names or a dict {{id: name}}, got {type(value).__name__}"
        )
    if not names:
        raise YOLOFormatError(f"{path}: 'names' is empty; list the class names in class-id order")
    return names


def _resolve_source(entry: Any, root: Path, path: Path, key: str) -> Path:
    if not isinstance(entry, (str, Path)):
        raise YOLOFormatError(f"{path}: '{key}' entries must be paths, got {entry!r}")
    source = Path(entry).expanduser()
    if source.is_absolute():
        return source
    resolved = root / source
    # Ultralytics' fallback, which exported datasets rely on (``train: ../train/images`` in a
    # data.yaml that sits in the dataset folder): a missing "../x" is looked up as root/x.
    if not resolved.exists() and str(entry).startswith("../"):
        fallback = root / str(entry)[3:]
        if fallback.exists():
            return fallback
    return resolved


def _split_sources(value: Any, root: Path, path: Path, key: str) -> tuple[Path, ...]:
    entries = value if isinstance(value, list) else [value]
    sources = tuple(_resolve_source(e, root, path, key) for e in entries)
    missing = [s for s in sources if not s.exists()]
    if missing:
        raise YOLOFormatError(
            f"{path}: '{key}' points to {', '.join(str(m) for m in missing)}, which does not exist "
            f"(relative entries are resolved against the dataset root {root})"
        )
    return sources


def _dataset_root(value: Any, path: Path) -> Path:
    """The folder split entries are relative to: ``path:`` (relative to the data.yaml's folder,
    else to the working directory), or the data.yaml's folder. A ``path`` that exists nowhere
    (Ultralytics resolves relative ones against its own datasets folder, so copied data.yaml files
    often carry one) falls back to the data.yaml's folder, with a warning."""
    if not value:
        return path.parent
    given = Path(str(value)).expanduser()
    candidates = [given] if given.is_absolute() else [path.parent / given, given]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    logger.warning("%s: path '%s' does not exist; split entries are read relative to %s", path, value, path.parent)
    return path.parent


def read_data_yaml(
    path: str | Path, required: Sequence[str] = ("train", "val", "names"), resolve_splits: bool = True
) -> YOLODataConfig:
    """Parse a YOLO ``data.yaml``; a key of ``required`` that is missing, unreadable names, or
    (with ``resolve_splits``) a split path that does not exist raise :class:`YOLOFormatError`
    naming the file and key. Without ``resolve_splits`` only the names are read (``splits`` is
    empty): what a model's class names need, where the images may be absent."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise FileNotFoundError(f"cannot read YOLO data file {path}: {err.strerror}") from err
    except yaml.YAMLError as err:
        raise YOLOFormatError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise YOLOFormatError(f"{path} must hold a mapping with keys train, val and names")
    if "validation" in data and "val" not in data:  # Ultralytics accepts this spelling too
        data["val"] = data.pop("validation")
    missing = [key for key in required if data.get(key) in (None, "", [])]
    if missing:
        raise YOLOFormatError(
            f"{path}: missing key{'s' if len(missing) > 1 else ''} {', '.join(repr(k) for k in missing)} "
            f"(a YOLO data.yaml needs train, val and names; path and test are optional)"
        )
    names = _parse_names(data["names"], path) if "names" in data else ()
    if "nc" in data and names and int(data["nc"]) != len(names):
        raise YOLOFormatError(f"{path}: nc is {data['nc']} but 'names' lists {len(names)} classes")
    if not resolve_splits:
        return YOLODataConfig(path=path, root=path.parent, names=names, splits={})
    root = _dataset_root(data.get("path"), path)
    splits = {
        key: _split_sources(data[key], root, path, key)
        for key in ("train", "val", "test")
        if data.get(key) not in (None, "", [])
    }
    return YOLODataConfig(path=path, root=root, names=names, splits=splits)


# ----------------------------------------------------------------------------- images and labels
def _listed_images(list_file: Path) -> list[Path]:
    """The images a .txt split file lists, one per line (relative lines: to the file's folder)."""
    images = []
    for line in list_file.read_text().splitlines():
        entry = line.strip()
        if entry:
            image = Path(entry)
            images.append(image if image.is_absolute() else list_file.parent / image)
    return images


def split_images(sources: Sequence[str | Path]) -> list[Path]:
    """Every image of a split's sources (folders searched recursively, .txt files read), sorted
    and without duplicates."""
    images: list[Path] = []
    for source in (Path(s) for s in sources):
        if source.is_dir():
            images.extend(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif source.suffix.lower() == ".txt":
            images.extend(_listed_images(source))
        elif source.suffix.lower() in IMAGE_SUFFIXES:
            images.append(source)
        else:
            raise YOLOFormatError(f"image source {source} is neither a folder, a .txt image list nor an image")
    return sorted(set(images))


def label_path(image: str | Path) -> Path:
    """The label file of ``image``: its last ``images`` folder becomes ``labels``, suffix ``.txt``."""
    parts = list(Path(image).parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


_SIZE_CACHE: dict[tuple[str, int, int], tuple[int, int]] = {}


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of an image as displayed (EXIF rotation applied), read from its header
    only and cached by path, modification time and size."""
    path = Path(path)
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise ImageReadError(f"image {path} does not exist") from None
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    if key not in _SIZE_CACHE:
        try:
            with Image.open(path) as image:  # lazy: reads the header, not the pixels
                width, height = image.size
                orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
            raise ImageReadError(f"image {path} cannot be decoded: {err}") from err
        _SIZE_CACHE[key] = (height, width) if orientation in _ROTATED_ORIENTATIONS else (width, height)
    return _SIZE_CACHE[key]


def _line_error(file: Path, number: int, line: str, problem: str) -> YOLOFormatError:
    return YOLOFormatError(f"{file}:{number}: {problem} in {line.strip()!r}")


def _parse_line(file: Path, number: int, line: str, num_classes: int) -> tuple[int, float, float, float, float]:
    """``(class, cx, cy, w, h)`` of one label line (a polygon line becomes its bounding box)."""
    fields = line.split()
    try:
        values = [float(v) for v in fields]
    except ValueError:
        raise _line_error(file, number, line, "non-numeric value") from None
    if len(values) != 5 and (len(values) < 7 or len(values) % 2 == 0):
        raise _line_error(
            file,
            number,
            line,
            f"{len(values)} numbers; expected 'class cx cy w h' (5 numbers) or a polygon "
            "'class x1 y1 x2 y2 x3 y3 ...' (an odd number, at least 7)",
        )
    if not all(math.isfinite(v) for v in values) or values[0] != int(values[0]):
        raise _line_error(file, number, line, f"class id {fields[0]} is not an integer")
    class_id = int(values[0])
    if not 0 <= class_id < num_classes:
        raise _line_error(
            file,
            number,
            line,
            f"class id {class_id} is not in 0..{num_classes - 1} (data.yaml lists {num_classes} names)",
        )
    if len(values) == 5:
        cx, cy, w, h = values[1:]
        x0, y0, x1, y1 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
    else:
        xs, ys = values[1::2], values[2::2]
        x0, y0, x1, y1 = min(xs), min(ys), max(xs), max(ys)
    lo, hi = -BOX_TOLERANCE, 1 + BOX_TOLERANCE
    if x1 < x0 or y1 < y0:
        raise _line_error(file, number, line, "negative box width or height")
    if not (lo <= x0 and x1 <= hi and lo <= y0 and y1 <= hi):
        raise _line_error(
            file,
            number,
            line,
            f"box x {x0:.4g}..{x1:.4g}, y {y0:.4g}..{y1:.4g} lies outside [0, 1]; YOLO coordinates are "
            "normalized by the image width and height",
        )
    return class_id, (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0


def read_label_file(file: str | Path, num_classes: int) -> list[tuple[int, float, float, float, float]]:
    """The objects of one label file as ``(class, cx, cy, w, h)`` normalized; a malformed line
    raises :class:`YOLOFormatError` naming the file and line."""
    file = Path(file)
    try:
        text = file.read_text(encoding="utf-8-sig")  # a byte-order mark, as some Windows tools write, is not data
    except UnicodeDecodeError as err:
        raise YOLOFormatError(f"{file} is not a UTF-8 text label file: {err}") from None
    return [
        _parse_line(file, number, line, num_classes)
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip()
    ]


def _annotation(ann_id: int, image_id: int, obj: tuple[int, float, float, float, float], w: int, h: int) -> dict:
    class_id, cx, cy, bw, bh = obj
    x0, y0 = max(cx - bw / 2, 0.0) * w, max(cy - bh / 2, 0.0) * h
    x1, y1 = min(cx + bw / 2, 1.0) * w, min(cy + bh / 2, 1.0) * h
    box_w, box_h = max(x1 - x0, 0.0), max(y1 - y0, 0.0)
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": class_id,
        "bbox": [x0, y0, box_w, box_h],
        "area": box_w * box_h,
        "iscrowd": 0,
    }


def coco_dict(images: Sequence[Path], names: Sequence[str], folder: Path) -> dict[str, Any]:
    """A COCO annotation dict of ``images`` (file names relative to ``folder`` where possible)
    and their YOLO labels; category id = class id. Logs one warning with the count of images
    without a label file."""
    coco_images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    unlabelled: list[Path] = []
    # Header reads are I/O bound: threads overlap them (results keep the order of ``images``).
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        sizes = list(pool.map(image_size, images))
    for image_id, (image, (w, h)) in enumerate(zip(images, sizes), start=1):
        try:
            file_name = str(image.relative_to(folder))
        except ValueError:
            file_name = str(image.absolute())
        coco_images.append({"id": image_id, "file_name": file_name, "width": w, "height": h})
        labels = label_path(image)
        if not labels.is_file():
            unlabelled.append(image)
            continue
        for obj in read_label_file(labels, len(names)):
            annotations.append(_annotation(len(annotations) + 1, image_id, obj, w, h))
    if unlabelled:
        logger.warning(
            "%d of %d images have no label file and count as background (no objects), e.g. %s (expected %s)",
            len(unlabelled),
            len(images),
            unlabelled[0],
            label_path(unlabelled[0]),
        )
    categories = [{"id": i, "name": name, "supercategory": "none"} for i, name in enumerate(names)]
    return {"images": coco_images, "annotations": annotations, "categories": categories}


# ----------------------------------------------------------------------------- dataset
def _sources(img_folder: str | Path | Sequence[str | Path]) -> list[Path]:
    if isinstance(img_folder, (str, Path)):
        return [Path(img_folder)]
    return [Path(s) for s in img_folder]


@register()
class YOLODetection(CocoDetection):
    """Detection dataset over YOLO labels; items and targets are those of
    :class:`~rtdetr_spartan.data.coco.CocoDetection` (labels 0..N-1 = YOLO class ids).

    ``img_folder``: the split's images — a folder (searched recursively), a .txt file listing
    images, or a list of those (as a split of ``data.yaml``). ``ann_file``: the ``data.yaml``
    that names the classes (its splits are not read here: ``data.layouts`` resolves them).
    The arguments are CocoDetection's, so a config switches between the two by ``type`` alone.
    ``.coco`` is a pycocotools ``COCO`` built in memory, for the COCO evaluator.
    """

    __inject__ = ["transforms"]
    __share__ = ["remap_mscoco_category", "num_classes"]

    def __init__(
        self,
        img_folder: str | Path | list[str],
        ann_file: str | Path,
        transforms: Callable[..., Any] | None = None,
        return_masks: bool = False,
        remap_mscoco_category: bool = False,
        num_classes: int | None = None,
        check_images: bool = True,
    ) -> None:
        self.ann_file = Path(ann_file)
        if return_masks:
            raise ValueError(f"{self.ann_file}: return_masks needs polygon masks; YOLO box labels have none")
        if remap_mscoco_category:
            raise ValueError(
                f"{self.ann_file}: remap_mscoco_category maps MS-COCO category ids (1..90); a YOLO dataset's "
                "class ids are its own, so set remap_mscoco_category: False"
            )
        sources = _sources(img_folder)
        config = read_data_yaml(self.ann_file, required=("names",), resolve_splits=False)
        images = split_images(sources)
        if not images:
            raise YOLOFormatError(
                f"no images ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(str(s) for s in sources)} "
                f"(image source of {self.ann_file})"
            )
        folder = sources[0] if sources[0].is_dir() else sources[0].parent
        self.img_folder = folder
        coco = in_memory_coco(coco_dict(images, config.names, folder))
        self._setup(coco, transforms, return_masks, remap_mscoco_category, num_classes, check_images)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}\nimages: {len(self.ids)}"
