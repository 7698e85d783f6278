"""Dataset layouts recognised in a directory, and the config overrides that point a config at one.

``detect_layout(path)`` recognises, in this order:

* ``coco``: ``annotations/instances_train*.json`` and ``annotations/instances_val*.json``, with
  images in ``<split>`` or ``images/<split>`` where ``<split>`` is the file's suffix
  (``instances_train2017.json`` -> ``train2017/``; ``instances_train.json`` -> ``train/``, as
  ``tools/make_shapes.py`` writes);
* ``roboflow``: Roboflow's COCO export, ``train/_annotations.coco.json`` and
  ``valid/_annotations.coco.json`` (or ``val/``), images next to each file, ``test/`` optional;
* ``yolo``: a ``data.yaml`` (or ``data.yml``; or ``path`` is that file) with ``train``, ``val``
  and ``names`` (see ``data.yolo``).

``detection_overrides(layout)`` gives the nested overrides (``train_dataloader.dataset``,
``val_dataloader.dataset``, ``num_classes``, ``remap_mscoco_category``) to deep-merge over a
detection config: a dataset's ``type``, ``img_folder`` and ``ann_file`` change, its
``transforms`` stay. ``classification_overrides(root)`` does the same for an ImageFolder root.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from torchvision.datasets.folder import IMG_EXTENSIONS

from rtdetr_spartan.data.coco import CocoDetection
from rtdetr_spartan.data.yolo import YOLODetection, read_data_yaml

__all__ = [
    "DatasetLayout",
    "DatasetLayoutError",
    "DatasetSplit",
    "classification_overrides",
    "detect_layout",
    "detection_dataset",
    "detection_overrides",
]

logger = logging.getLogger(__name__)

YOLO_FILES: tuple[str, ...] = ("data.yaml", "data.yml")
ROBOFLOW_FILE = "_annotations.coco.json"
ROBOFLOW_VAL_FOLDERS: tuple[str, ...] = ("valid", "val")
CLASSIFICATION_VAL_FOLDERS: tuple[str, ...] = ("val", "valid", "validation")


class DatasetLayoutError(ValueError):
    """A directory is not a dataset of a known layout, or one of its parts is missing."""


@dataclass(frozen=True)
class DatasetSplit:
    """Where one split lives: ``img_folder`` (a folder, or for YOLO the split's sources) and
    ``ann_file`` (a COCO JSON file, or the YOLO ``data.yaml``)."""

    img_folder: Path | tuple[Path, ...]
    ann_file: Path

    def config(self) -> dict[str, Any]:
        folder = self.img_folder
        if isinstance(folder, tuple):
            return {"img_folder": str(folder[0]) if len(folder) == 1 else [str(p) for p in folder]}
        return {"img_folder": str(folder)}


@dataclass(frozen=True)
class DatasetLayout:
    """A recognised dataset: ``kind`` (``coco`` | ``roboflow`` | ``yolo``), its ``root``, class
    ``names`` in label order, and its splits (``test`` may be None)."""

    kind: str
    root: Path
    names: list[str]
    train: DatasetSplit
    val: DatasetSplit
    test: DatasetSplit | None = None

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def dataset_type(self) -> str:
        """The registered dataset class that reads this layout."""
        return "YOLODetection" if self.kind == "yolo" else "CocoDetection"


# ----------------------------------------------------------------------------- COCO files
def _coco_names(ann_file: Path) -> list[str]:
    """Category names of a COCO file in label order (sorted category id)."""
    try:
        data = json.loads(ann_file.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetLayoutError(f"{ann_file} is not a readable COCO JSON file: {err}") from err
    categories = data.get("categories") if isinstance(data, dict) else None
    if not categories:
        raise DatasetLayoutError(f"{ann_file} has no 'categories' list; a COCO file lists {{id, name}} per class")
    by_id = {int(c["id"]): str(c.get("name", c["id"])) for c in categories}
    return [by_id[cid] for cid in sorted(by_id)]


def _coco_split(root: Path, ann_file: Path) -> DatasetSplit:
    folder_name = ann_file.stem.removeprefix("instances_")
    candidates = (root / folder_name, root / "images" / folder_name)
    for folder in candidates:
        if folder.is_dir():
            return DatasetSplit(folder, ann_file)
    raise DatasetLayoutError(
        f"{root}: found {ann_file.relative_to(root)} but no image folder for it; looked for "
        f"{', '.join(str(c.relative_to(root)) + '/' for c in candidates)}"
    )


def _instances_file(root: Path, split: str) -> Path | None:
    found = sorted((root / "annotations").glob(f"instances_{split}*.json"))
    return found[0] if found else None


def _detect_coco(root: Path) -> DatasetLayout | None:
    train, val = _instances_file(root, "train"), _instances_file(root, "val")
    if train is None or val is None:
        return None
    test = _instances_file(root, "test")
    return DatasetLayout(
        kind="coco",
        root=root,
        names=_coco_names(val),
        train=_coco_split(root, train),
        val=_coco_split(root, val),
        test=_coco_split(root, test) if test is not None else None,
    )


def _detect_roboflow(root: Path) -> DatasetLayout | None:
    train = root / "train" / ROBOFLOW_FILE
    if not train.is_file():
        return None
    val = next((root / f / ROBOFLOW_FILE for f in ROBOFLOW_VAL_FOLDERS if (root / f / ROBOFLOW_FILE).is_file()), None)
    if val is None:
        raise DatasetLayoutError(
            f"{root}: a Roboflow COCO export with {train.relative_to(root)} but no validation split; looked for "
            f"{', '.join(f'{f}/{ROBOFLOW_FILE}' for f in ROBOFLOW_VAL_FOLDERS)}"
        )
    test = root / "test" / ROBOFLOW_FILE
    return DatasetLayout(
        kind="roboflow",
        root=root,
        names=_coco_names(train),
        train=DatasetSplit(train.parent, train),
        val=DatasetSplit(val.parent, val),
        test=DatasetSplit(test.parent, test) if test.is_file() else None,
    )


def _yolo_layout(data_yaml: Path) -> DatasetLayout:
    config = read_data_yaml(data_yaml)
    test = config.splits.get("test")
    return DatasetLayout(
        kind="yolo",
        root=data_yaml.parent,
        names=list(config.names),
        train=DatasetSplit(config.splits["train"], data_yaml),
        val=DatasetSplit(config.splits["val"], data_yaml),
        test=DatasetSplit(test, data_yaml) if test else None,
    )


def _detect_yolo(root: Path) -> DatasetLayout | None:
    data_yaml = next((root / name for name in YOLO_FILES if (root / name).is_file()), None)
    return _yolo_layout(data_yaml) if data_yaml is not None else None


def detect_layout(path: str | Path) -> DatasetLayout:
    """The layout of the dataset at ``path`` (a directory, or a YOLO ``data.yaml``); raises
    :class:`DatasetLayoutError` listing what was looked for when none matches."""
    root = Path(path).expanduser().absolute()
    if root.is_file() and root.suffix in (".yaml", ".yml"):
        return _yolo_layout(root)
    if not root.is_dir():
        raise DatasetLayoutError(f"dataset {root} does not exist or is not a directory (or a YOLO data.yaml)")
    for detect in (_detect_coco, _detect_roboflow, _detect_yolo):
        layout = detect(root)
        if layout is not None:
            logger.info("%s: %s layout, %d classes", root, layout.kind, layout.num_classes)
            return layout
    raise DatasetLayoutError(
        f"{root} is not a dataset of a known layout; looked for: COCO (annotations/instances_train*.json and "
        f"annotations/instances_val*.json), a Roboflow COCO export (train/{ROBOFLOW_FILE} and "
        f"valid/{ROBOFLOW_FILE}), YOLO ({' or '.join(YOLO_FILES)} with train, val and names). "
        f"Found: {', '.join(sorted(p.name for p in root.iterdir())[:10]) or 'nothing'}"
    )


def detection_dataset(
    img_folder: str | Path | list[str],
    ann_file: str | Path,
    transforms: Callable[..., Any] | None = None,
    remap_mscoco_category: bool = False,
    num_classes: int | None = None,
) -> CocoDetection:
    """The dataset of a config's ``img_folder`` / ``ann_file`` pair, for code that reads a dataset
    section without building it from the config (calibration, evaluation of exported models):
    :class:`YOLODetection` when ``ann_file`` is a YOLO ``data.yaml``, else :class:`CocoDetection`."""
    if Path(ann_file).suffix.lower() in (".yaml", ".yml"):
        return YOLODetection(img_folder, ann_file, transforms, False, remap_mscoco_category, num_classes)
    if isinstance(img_folder, list):
        raise ValueError(f"{ann_file}: a COCO dataset reads one image folder, got the list {img_folder}")
    return CocoDetection(img_folder, ann_file, transforms, False, remap_mscoco_category, num_classes)


# ----------------------------------------------------------------------------- overrides
def detection_overrides(layout: DatasetLayout) -> dict[str, Any]:
    """Nested overrides that point a detection config at ``layout``: each dataloader's dataset
    ``type``, ``img_folder`` and ``ann_file`` (``transforms`` and the rest stay), ``num_classes``
    from the dataset, and ``remap_mscoco_category: False`` (labels are the dataset's own
    categories in sorted-id order; for MS-COCO itself that is the same 80-class order)."""

    def dataset(split: DatasetSplit) -> dict[str, Any]:
        return {"dataset": {"type": layout.dataset_type, **split.config(), "ann_file": str(split.ann_file)}}

    return {
        "num_classes": layout.num_classes,
        "remap_mscoco_category": False,
        "train_dataloader": dataset(layout.train),
        "val_dataloader": dataset(layout.val),
    }


def _class_folders(folder: Path) -> list[str]:
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise DatasetLayoutError(
            f"{folder} holds no class folders; an ImageFolder split is <split>/<class>/<image> "
            f"({', '.join(IMG_EXTENSIONS)})"
        )
    return classes


def classification_overrides(root: str | Path) -> dict[str, Any]:
    """Overrides that point a classification (pretraining) config at an ImageFolder ``root``
    with ``train/<class>/*`` and ``val/<class>/*`` (or ``valid/``, ``validation/``): each
    dataloader's ``dataset.root`` and ``num_classes`` (the class folders of train/)."""
    root = Path(root).expanduser().absolute()
    train = root / "train"
    val = next((root / f for f in CLASSIFICATION_VAL_FOLDERS if (root / f).is_dir()), None)
    if not train.is_dir() or val is None:
        raise DatasetLayoutError(
            f"{root} is not an ImageFolder dataset; looked for train/<class>/ and one of "
            f"{', '.join(f + '/<class>/' for f in CLASSIFICATION_VAL_FOLDERS)}"
        )
    classes = _class_folders(train)
    val_classes = _class_folders(val)
    if val_classes != classes:
        # ImageFolder numbers classes by sorted folder name: other folders would shift the labels.
        differ = sorted(set(classes) ^ set(val_classes))
        raise DatasetLayoutError(
            f"{train} and {val} must hold the same class folders (labels are their sorted order); "
            f"in only one of them: {', '.join(differ[:10])}"
        )
    return {
        "num_classes": len(classes),
        "train_dataloader": {"dataset": {"root": str(train)}},
        "val_dataloader": {"dataset": {"root": str(val)}},
    }
