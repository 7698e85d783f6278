"""Image files in and pictures out, shared by inference, visualization and the quickstart:
listing the images (and videos) of a source, unique output names that never replace an input,
and drawing labelled boxes.

Drawing takes any object with ``label``, ``name``, ``score`` and ``box`` (XYXY pixels), such as
:class:`rtdetr_spartan.deploy.types.Detection`, so this module depends on no other package.
"""

from __future__ import annotations

import colorsys
import logging
from pathlib import Path
from typing import Callable, Collection, Iterable, Protocol, Sequence

from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "IMAGE_SUFFIXES",
    "VIDEO_SUFFIXES",
    "Drawable",
    "OutputOverwritesInputError",
    "class_color",
    "collect_inputs",
    "draw_detections",
    "refuse_overwriting_inputs",
    "unique_names",
]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"})
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"})


class OutputOverwritesInputError(ValueError):
    """An output folder or file that is (or would replace) one of the inputs."""


def collect_inputs(source: str | Path, suffixes: frozenset[str] = IMAGE_SUFFIXES | VIDEO_SUFFIXES) -> list[Path]:
    """``source`` itself if it is a file, else the files with ``suffixes`` (default: images and
    videos) directly inside it, sorted."""
    source = Path(source)
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise FileNotFoundError(f"input {source} is neither a file nor a directory")
    found = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
    if not found:
        kinds = "images or videos" if suffixes & VIDEO_SUFFIXES else "images"
        raise FileNotFoundError(f"no {kinds} ({', '.join(sorted(suffixes))}) in {source}")
    return found


def unique_names(
    inputs: Sequence[Path], name_of: Callable[[Path], str], reserved: Iterable[str] = ()
) -> dict[Path, str]:
    """Each input's output name ``name_of(input)``, made unique: when two inputs would share a
    name (or one would take a ``reserved`` name), an input whose name is its own file name keeps
    it and the others get ``_2``, ``_3``, ... before the suffix (a warning names both). Names are
    compared case-insensitively, as some file systems do."""
    natural = {p: name_of(p) for p in inputs}
    owners: dict[str, Path | None] = {name.casefold(): None for name in reserved}  # name -> its input
    names: dict[Path, str] = {}
    for path in sorted(inputs, key=lambda p: natural[p] != p.name):  # stable: else input order
        name = natural[path]
        suffix = Path(name).suffix
        stem = name[: len(name) - len(suffix)]
        count = 1
        while name.casefold() in owners:
            count += 1
            name = f"{stem}_{count}{suffix}"
        if count > 1:
            owner = owners[natural[path].casefold()]
            logger.warning(
                "%s and %s would both be written as %s; %s is written as %s",
                owner.name if owner else natural[path],
                path.name,
                natural[path],
                path.name,
                name,
            )
        owners[name.casefold()] = path
        names[path] = name
    return names


def refuse_overwriting_inputs(targets: Iterable[Path], inputs: Collection[Path]) -> None:
    """:class:`OutputOverwritesInputError` naming the first of ``targets`` that is one of ``inputs``."""
    resolved = {p.resolve(): p for p in inputs}
    for target in targets:
        if target.resolve() in resolved:
            raise OutputOverwritesInputError(
                f"output {target} would replace the input file {resolved[target.resolve()]}; "
                "choose an output folder (-o) that holds no inputs"
            )


class Drawable(Protocol):
    """What :func:`draw_detections` reads of a detection."""

    @property
    def label(self) -> int: ...

    @property
    def name(self) -> str: ...

    @property
    def score(self) -> float: ...

    @property
    def box(self) -> tuple[float, float, float, float]: ...


def class_color(label: int) -> tuple[int, int, int]:
    """A bright RGB colour for ``label``; neighbouring labels get far-apart hues."""
    hue = (label * 0.618033988749895) % 1.0  # golden-ratio steps spread hues evenly
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def _text_color(background: tuple[int, int, int]) -> tuple[int, int, int]:
    luminance = 0.299 * background[0] + 0.587 * background[1] + 0.114 * background[2]
    return (0, 0, 0) if luminance > 150 else (255, 255, 255)


def draw_detections(
    image: Image.Image,
    detections: Sequence[Drawable],
    line_width: int | None = None,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont | None = None,
) -> Image.Image:
    """A copy of ``image`` (as RGB) with each detection's box and ``"name score"`` caption.

    Boxes are XYXY pixels of ``image``. ``line_width`` defaults to ~0.3% of the longer side.
    Detections are drawn from the lowest score up, so where boxes or captions overlap the most
    confident one stays readable on top.
    """
    canvas = image.convert("RGB")  # always a copy
    draw = ImageDraw.Draw(canvas)
    width = line_width or max(1, round(max(canvas.size) * 0.003))
    font = font or ImageFont.load_default()
    for det in sorted(detections, key=lambda d: d.score):
        color = class_color(det.label)
        x0, y0, x1, y1 = det.box
        draw.rectangle((x0, y0, max(x0, x1), max(y0, y1)), outline=color, width=width)
        caption = f"{det.name} {det.score:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), caption, font=font)
        text_w, text_h = right - left, bottom - top
        # Caption above the box when it fits, else just inside its top edge.
        ty = y0 - text_h - 2 if y0 - text_h - 2 >= 0 else y0
        draw.rectangle((x0, ty, x0 + text_w + 4, ty + text_h + 2), fill=color)
        draw.text((x0 + 2 - left, ty + 1 - top), caption, fill=_text_color(color), font=font)
    return canvas
