"""Figures: an image beside its CAM overlays, feature-map grids; as RGB arrays for PNG and TensorBoard."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from pytorch_grad_cam.utils.image import show_cam_on_image

from rtdetr_spartan.misc.images import Drawable, draw_detections

__all__ = ["cam_overlay", "feature_grid", "panels_figure", "save_png"]


def cam_overlay(image: Image.Image, cam: np.ndarray, detections: Sequence[Drawable] = ()) -> Image.Image:
    """``cam`` [h, w] in [0, 1] resized to ``image`` and blended over it (jet colour map), with
    ``detections`` (boxes in ``image`` pixels) drawn on top."""
    heat = Image.fromarray(np.uint8(np.clip(cam, 0, 1) * 255)).resize(image.size, Image.Resampling.BILINEAR)
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    blended = Image.fromarray(show_cam_on_image(rgb, np.asarray(heat, dtype=np.float32) / 255.0, use_rgb=True))
    return draw_detections(blended, detections) if detections else blended


def _to_array(figure: Figure) -> np.ndarray:
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def panels_figure(
    panels: Sequence[tuple[str, Image.Image | np.ndarray]], title: str = "", columns: int = 0
) -> np.ndarray:
    """Panels side by side (``columns`` per row, default all in one row), each with its title;
    returns the figure as an RGB uint8 array [H, W, 3]."""
    columns = columns or len(panels)
    rows = -(-len(panels) // columns)
    figure = Figure(figsize=(2.6 * columns, 2.6 * rows + (0.35 if title else 0)), dpi=100)
    for index, (name, picture) in enumerate(panels):
        axis = figure.add_subplot(rows, columns, index + 1)
        axis.imshow(picture, cmap="viridis")
        axis.set_title(name, fontsize=8)
        axis.axis("off")
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return _to_array(figure)


def feature_grid(feature: torch.Tensor, channels: int = 8) -> list[tuple[str, np.ndarray]]:
    """The ``channels`` most active channels of one map [C, H, W] (by mean activation), each
    scaled to [0, 1], as (caption, [H, W]) panels."""
    feature = feature.detach().float().cpu()
    order = feature.mean(dim=(1, 2)).argsort(descending=True)[:channels]
    panels = []
    for c in order.tolist():
        plane = feature[c]
        span = (plane.max() - plane.min()).clamp_min(1e-12)
        panels.append((f"ch {c}", ((plane - plane.min()) / span).numpy()))
    return panels


def save_png(array: np.ndarray, path: str) -> None:
    Image.fromarray(array).save(path)
