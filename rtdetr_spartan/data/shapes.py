"""Generated datasets of coloured shapes on textured backgrounds.

Detection mode writes ``out/{train,val}/NNNNNN.jpg`` (or .png) and COCO files
``out/annotations/instances_{train,val}.json`` with NON-contiguous category ids (so the
dataset's label mapping is exercised), or the same images in the YOLO layout
(``make_yolo_dataset``: ``out/images/<split>/``, ``out/labels/<split>/``, ``out/data.yaml``); classification mode writes an ImageFolder tree
``out/{train,val}/<class>/NNNNNN.jpg``. Output is a pure function of the arguments: every image
draws from its own generator seeded with ``(seed, split, index)``.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "SHAPE_CATEGORIES",
    "ShapeObject",
    "make_detection_dataset",
    "make_yolo_dataset",
    "make_classification_dataset",
    "render_detection_image",
    "render_classification_image",
]

logger = logging.getLogger(__name__)

# (category_id, name): ids deliberately have gaps.
SHAPE_CATEGORIES: tuple[tuple[int, str], ...] = ((3, "square"), (7, "circle"), (11, "triangle"), (20, "star"))
SPLITS: tuple[str, ...] = ("train", "val")
IMAGE_FORMATS: dict[str, str] = {"png": "PNG", "jpg": "JPEG"}

MIN_RADIUS = 0.06  # of the image side: the smallest box side is then >= ~9% of the image
MAX_RADIUS = 0.20
MAX_OVERLAP = 0.3  # boxes may share at most this fraction of the smaller box: no hidden objects
EMPTY_EVERY = 8  # images 3, 11, 19, ... have no objects


@dataclass(frozen=True)
class ShapeObject:
    """One drawn shape: category, XYXY pixel box (exclusive end), pixel area, outline polygon."""

    category_id: int
    box: tuple[int, int, int, int]
    area: int
    polygon: tuple[float, ...]


# ----------------------------------------------------------------------------- geometry
def shape_polygon(name: str, cx: float, cy: float, radius: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of ``name`` centred at (cx, cy) with circumradius ``radius``, rotated by ``angle``."""
    radii: tuple[float, ...]
    if name == "circle":
        n, radii = 48, (radius,)
    elif name == "square":
        n, radii = 4, (radius,)
    elif name == "triangle":
        n, radii = 3, (radius,)
    elif name == "star":
        n, radii = 10, (radius, radius * 0.45)
    else:
        raise ValueError(f"unknown shape '{name}'; expected one of {[s for _, s in SHAPE_CATEGORIES]}")
    points = []
    for k in range(n):
        r = radii[k % len(radii)]
        t = angle + 2.0 * math.pi * k / n
        points.append((cx + r * math.cos(t), cy + r * math.sin(t)))
    return points


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection area over the area of the smaller of two XYXY boxes."""
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / smaller if smaller > 0 else 0.0


# ----------------------------------------------------------------------------- colours
def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=3).astype(np.float64)


def _contrasting_colour(rng: np.random.Generator, avoid: list[np.ndarray]) -> tuple[int, int, int]:
    """A colour at least clearly different (L1 >= 200) from every colour in ``avoid``."""
    best, best_gap = _random_colour(rng), -1.0
    for _ in range(32):
        c = _random_colour(rng)
        gap = min(float(np.abs(c - a).sum()) for a in avoid)
        if gap >= 200:
            return tuple(int(v) for v in c)  # type: ignore[return-value]
        if gap > best_gap:
            best, best_gap = c, gap
    return tuple(int(v) for v in best)  # type: ignore[return-value]


def _background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """A textured ``[size, size, 3]`` uint8 background and its main colours."""
    c0 = _random_colour(rng)
    c1 = np.clip(c0 + rng.normal(0, 45, size=3), 0, 255)
    style = int(rng.integers(3))
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
    yy, xx = ramp[:, None], ramp[None, :]
    if style == 0:  # gradient along a random direction
        theta = rng.uniform(0, 2 * math.pi)
        t = math.cos(theta) * xx + math.sin(theta) * yy
        t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
        img = (c0 * (1 - t[..., None]) + c1 * t[..., None]).astype(np.float32)
    elif style == 1:  # stripes
        period = rng.uniform(0.03, 0.12)
        theta = rng.uniform(0, math.pi)
        phase = (xx * math.cos(theta) + yy * math.sin(theta)) / period
        img = np.where((np.floor(phase) % 2 == 0)[..., None], c0.astype(np.float32), c1.astype(np.float32))
    else:  # flat colour; the noise below makes it texture
        img = np.broadcast_to(c0.astype(np.float32), (size, size, 3))
    img = img + 12.0 * rng.standard_normal(size=(size, size, 3), dtype=np.float32)
    return np.clip(img, 0, 255).astype(np.uint8), [c0, c1]


# ----------------------------------------------------------------------------- rendering
def _draw_shape(
    canvas: Image.Image, name: str, cx: float, cy: float, radius: float, angle: float, colour: tuple[int, int, int]
) -> tuple[tuple[int, int, int, int], int, list[tuple[float, float]]] | None:
    """Draw one filled shape; its exact pixel box/area come from a mask of the same polygon."""
    polygon = shape_polygon(name, cx, cy, radius, angle)
    mask = Image.new("L", canvas.size, 0)
    ImageDraw.Draw(mask).polygon(polygon, fill=255)
    box = mask.getbbox()
    if box is None:
        return None
    ImageDraw.Draw(canvas).polygon(polygon, fill=colour)
    area = int(np.count_nonzero(np.asarray(mask)))
    return box, area, polygon


def _place(
    rng: np.random.Generator, size: int, taken: list[tuple[int, int, int, int]]
) -> tuple[float, float, float] | None:
    """A centre and radius whose bounding square overlaps earlier objects only a little."""
    for _ in range(20):
        r = rng.uniform(MIN_RADIUS, MAX_RADIUS) * size
        cx, cy = rng.uniform(r, size - r, size=2)
        square = (int(cx - r), int(cy - r), int(math.ceil(cx + r)), int(math.ceil(cy + r)))
        if all(_overlap(square, t) <= MAX_OVERLAP for t in taken):
            return float(cx), float(cy), float(r)
    return None


def render_detection_image(
    rng: np.random.Generator, size: int, num_objects: int
) -> tuple[Image.Image, list[ShapeObject]]:
    """A ``size x size`` RGB image with up to ``num_objects`` shapes (fewer if they do not fit)."""
    pixels, bg_colours = _background(rng, size)
    canvas = Image.fromarray(pixels)
    objects: list[ShapeObject] = []
    taken: list[tuple[int, int, int, int]] = []
    for _ in range(num_objects):
        category_id, name = SHAPE_CATEGORIES[int(rng.integers(len(SHAPE_CATEGORIES)))]
        placed = _place(rng, size, taken)
        if placed is None:
            continue
        cx, cy, r = placed
        drawn = _draw_shape(canvas, name, cx, cy, r, rng.uniform(0, 2 * math.pi), _contrasting_colour(rng, bg_colours))
        if drawn is None:
            continue
        box, area, polygon = drawn
        taken.append(box)
        objects.append(ShapeObject(category_id, box, area, tuple(round(v, 2) for p in polygon for v in p)))
    return canvas, objects


def render_classification_image(rng: np.random.Generator, size: int, name: str) -> Image.Image:
    """One roughly centred shape of class ``name`` with random scale, rotation and colours."""
    pixels, bg_colours = _background(rng, size)
    canvas = Image.fromarray(pixels)
    r = rng.uniform(0.2, 0.4) * size
    cx, cy = size / 2 + rng.uniform(-0.1, 0.1, size=2) * size
    angle = rng.uniform(0, 2 * math.pi)
    _draw_shape(canvas, name, float(cx), float(cy), r, angle, _contrasting_colour(rng, bg_colours))
    return canvas


# ----------------------------------------------------------------------------- writers
def _image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLITS.index(split), index])


def _save(image: Image.Image, path: Path, image_format: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if image_format == "jpg":
        image.save(path, format="JPEG", quality=95)
    else:
        image.save(path, format="PNG", compress_level=1)  # noisy images barely compress


def _check_args(size: int, image_format: str, counts: dict[str, int], max_objects: int | None = None) -> None:
    """The generators' shared argument checks; ``max_objects`` only for the detection layouts."""
    if max_objects is not None and max_objects < 1:
        raise ValueError(f"max_objects must be >= 1, got {max_objects}")
    if size < 32:
        raise ValueError(f"size must be >= 32 pixels, got {size}")
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {sorted(IMAGE_FORMATS)}, got '{image_format}'")
    for split, n in counts.items():
        if n < 0:
            raise ValueError(f"number of {split} images must be >= 0, got {n}")


def _coco_annotation(ann_id: int, image_id: int, obj: ShapeObject) -> dict[str, Any]:
    x0, y0, x1, y1 = obj.box
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": obj.category_id,
        "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
        "area": float(obj.area),
        "iscrowd": 0,
        "segmentation": [list(obj.polygon)],
    }


def _detection_samples(
    split: str, count: int, size: int, seed: int, max_objects: int
) -> Iterator[tuple[int, Image.Image, list[ShapeObject]]]:
    """``(index, image, objects)`` of each image of a split; the same for every output layout."""
    for index in range(count):
        rng = _image_rng(seed, split, index)
        num_objects = 0 if index % EMPTY_EVERY == 3 else int(rng.integers(1, max_objects + 1))
        image, objects = render_detection_image(rng, size, num_objects)
        yield index, image, objects


def _write_detection_split(
    out: Path, split: str, count: int, size: int, seed: int, image_format: str, max_objects: int
) -> Path:
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for index, image, objects in _detection_samples(split, count, size, seed, max_objects):
        file_name = f"{index:06d}.{image_format}"
        _save(image, out / split / file_name, image_format)
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
        for obj in objects:
            annotations.append(_coco_annotation(len(annotations) + 1, image_id, obj))
    coco = {
        "info": {"description": f"generated shapes ({split}), seed {seed}"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": cid, "name": name, "supercategory": "shape"} for cid, name in SHAPE_CATEGORIES],
    }
    ann_path = out / "annotations" / f"instances_{split}.json"
    ann_path.parent.mkdir(parents=True, exist_ok=True)
    ann_path.write_text(json.dumps(coco, separators=(",", ":")))
    logger.info("%s: %d images, %d objects -> %s", split, len(images), len(annotations), ann_path)
    return ann_path


def make_detection_dataset(
    out: str | Path,
    train: int,
    val: int,
    size: int = 256,
    seed: int = 0,
    image_format: str = "jpg",
    max_objects: int = 4,
) -> dict[str, Path]:
    """Write the detection dataset; returns ``{split: annotation file}``."""
    counts = {"train": train, "val": val}
    _check_args(size, image_format, counts, max_objects)
    out = Path(out)
    return {
        split: _write_detection_split(out, split, n, size, seed, image_format, max_objects)
        for split, n in counts.items()
    }


def _yolo_line(obj: ShapeObject, size: int) -> str:
    x0, y0, x1, y1 = obj.box
    class_id = [cid for cid, _ in SHAPE_CATEGORIES].index(obj.category_id)
    cx, cy, w, h = (x0 + x1) / 2 / size, (y0 + y1) / 2 / size, (x1 - x0) / size, (y1 - y0) / size
    return f"{class_id} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}"


def make_yolo_dataset(
    out: str | Path,
    train: int,
    val: int,
    size: int = 256,
    seed: int = 0,
    image_format: str = "jpg",
    max_objects: int = 4,
) -> Path:
    """Write the detection dataset (the same images and objects as :func:`make_detection_dataset`)
    in the YOLO layout: ``out/images/{train,val}/``, ``out/labels/{train,val}/*.txt`` (``class cx
    cy w h`` normalized; class = index in ``SHAPE_CATEGORIES``; empty files for images without
    objects) and ``out/data.yaml``; returns the data.yaml path."""
    counts = {"train": train, "val": val}
    _check_args(size, image_format, counts, max_objects)
    out = Path(out)
    for split, count in counts.items():
        labels = out / "labels" / split
        labels.mkdir(parents=True, exist_ok=True)
        objects_written = 0
        for index, image, objects in _detection_samples(split, count, size, seed, max_objects):
            _save(image, out / "images" / split / f"{index:06d}.{image_format}", image_format)
            lines = [_yolo_line(obj, size) for obj in objects]
            (labels / f"{index:06d}.txt").write_text("".join(line + "\n" for line in lines))
            objects_written += len(lines)
        logger.info("%s: %d images, %d objects -> %s", split, count, objects_written, labels)
    names = "\n".join(f"  {i}: {name}" for i, (_, name) in enumerate(SHAPE_CATEGORIES))
    data_yaml = out / "data.yaml"
    data_yaml.write_text(
        f"# generated shapes, seed {seed}\npath: .\ntrain: images/train\nval: images/val\nnames:\n{names}\n"
    )
    return data_yaml


def make_classification_dataset(
    out: str | Path, train: int, val: int, size: int = 64, seed: int = 0, image_format: str = "jpg"
) -> dict[str, Path]:
    """Write an ImageFolder tree, classes balanced round-robin; returns ``{split: folder}``."""
    counts = {"train": train, "val": val}
    _check_args(size, image_format, counts)
    out = Path(out)
    names = [name for _, name in SHAPE_CATEGORIES]
    for split, count in counts.items():
        if 0 < count < len(names):
            # ImageFolder needs every class folder to hold an image.
            raise ValueError(f"{split}: need 0 or at least {len(names)} images (one per class), got {count}")
        for index in range(count):
            name = names[index % len(names)]
            image = render_classification_image(_image_rng(seed, split, index), size, name)
            _save(image, out / split / name / f"{index:06d}.{image_format}", image_format)
        logger.info("%s: %d images in %d classes -> %s", split, count, len(names), out / split)
    return {split: out / split for split in counts}
