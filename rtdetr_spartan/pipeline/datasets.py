"""Generated datasets of the quickstart: written once, reused while their settings match.

Each dataset folder holds ``spec.json`` with the generator arguments. A folder with the same
spec is reused as is; one with another spec is regenerated (the folder is ours: it has a spec);
a non-empty folder without a spec is never touched.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Callable

from rtdetr_spartan.data.shapes import make_classification_dataset, make_detection_dataset

__all__ = ["SPEC_FILE", "ensure_classification_dataset", "ensure_detection_dataset"]

logger = logging.getLogger(__name__)

SPEC_FILE = "spec.json"


def _ensure(root: Path, spec: dict[str, Any], make: Callable[[], object]) -> Path:
    spec_path = root / SPEC_FILE
    if spec_path.is_file():
        try:
            found = json.loads(spec_path.read_text())
        except json.JSONDecodeError:
            found = None
        if found == spec:
            logger.info("reusing %s (%s)", root, _describe(spec))
            return root
        logger.info("%s was generated with other settings (%s); regenerating", root, found)
        shutil.rmtree(root)
    elif root.is_dir() and any(root.iterdir()):
        raise FileExistsError(
            f"{root} exists, is not empty and has no {SPEC_FILE}: it was not written by "
            "the quickstart, so it is left alone; choose another --data-dir"
        )
    logger.info("generating %s (%s)", root, _describe(spec))
    make()
    spec_path.write_text(json.dumps(spec, indent=2))
    return root


def _describe(spec: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in spec.items())


def ensure_detection_dataset(root: str | Path, train: int, val: int, size: int, seed: int, max_objects: int) -> Path:
    """The COCO shapes set in ``root`` (``train/``, ``val/``, ``annotations/instances_*.json``)."""
    root = Path(root)
    spec = {"kind": "detection", "train": train, "val": val, "size": size, "seed": seed, "max_objects": max_objects}
    return _ensure(
        root, spec, lambda: make_detection_dataset(root, train, val, size=size, seed=seed, max_objects=max_objects)
    )


def ensure_classification_dataset(root: str | Path, train: int, val: int, size: int, seed: int) -> Path:
    """The ImageFolder shapes set in ``root`` (``train/<class>/``, ``val/<class>/``)."""
    root = Path(root)
    spec = {"kind": "classification", "train": train, "val": val, "size": size, "seed": seed}
    return _ensure(root, spec, lambda: make_classification_dataset(root, train, val, size=size, seed=seed))
