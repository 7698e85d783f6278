"""Draw detections on a PIL image: one colour per class, a labelled box per detection."""

from __future__ import annotations

import colorsys
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

from rtdetr_spartan.deploy.types import Detection

__all__ = ["class_color", "draw_detections"]


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
    detections: Sequence[Detection],
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
