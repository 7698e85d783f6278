"""Image files the data tests read: 16-bit PNGs and JPEGs with an EXIF orientation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

ORIENTATION = 0x0112  # the EXIF tag


def save_16_bit_png(path: Path, values: np.ndarray) -> Path:
    """A single-channel 16-bit PNG (PIL mode ``I;16``) of ``values`` [H, W] uint16."""
    image = Image.fromarray(values.astype(np.uint16))
    assert image.mode == "I;16"
    image.save(path)
    return path


def gradient_16_bit(height: int = 8, width: int = 64) -> np.ndarray:
    """[H, W] uint16 running from 0 to 65535 across the width."""
    return np.tile(np.linspace(0, 65535, width).round().astype(np.uint16), (height, 1))


def save_with_orientation(path: Path, orientation: int, size: tuple[int, int] = (64, 128)) -> Path:
    """A stored ``size`` (w, h) JPEG, blue, with a red top-left quadrant, tagged ``orientation``."""
    w, h = size
    pixels = np.zeros((h, w, 3), dtype=np.uint8)
    pixels[..., 2] = 255
    pixels[: h // 2, : w // 2] = (255, 0, 0)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[ORIENTATION] = orientation
    image.save(path, quality=95, exif=exif.tobytes())
    return path
