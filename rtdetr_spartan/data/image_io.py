"""Image reading shared by training, evaluation and inference: every image is decoded the same way.

``read_rgb(path)`` opens a file as an 8-bit RGB ``PIL.Image`` in its *displayed* orientation:
  * the EXIF orientation tag is applied (``ImageOps.exif_transpose``), so a phone photo stored
    rotated is processed, and its boxes reported, as it is shown;
  * 16- and 32-bit images (PIL modes ``I;16*``, ``I``, ``F``) are scaled to 8 bits by their
    type's range instead of saturating: PIL's ``convert("RGB")`` clips every value above 255,
    which turns a 16-bit PNG all white.

``to_rgb(image)`` does the same to an image already in memory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

__all__ = ["read_rgb", "to_rgb"]

# The full-scale value of PIL's high-bit-depth modes: 16-bit modes span 0..65535; 32-bit integer
# ("I") images opened from 16-bit PNGs hold 0..65535 too, so they are scaled by that range unless
# they exceed it; float ("F") images are taken to be in [0, 1] unless they exceed it.
_SIXTEEN_BIT = 65535.0


def _scaled_to_8_bit(image: Image.Image) -> Image.Image:
    """A single-channel high-bit-depth image as mode ``L``, scaled by its type's full range."""
    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        full = 1.0 if values.size == 0 or values.max() <= 1.0 else float(values.max())
    else:
        full = _SIXTEEN_BIT if values.size == 0 or values.max() <= _SIXTEEN_BIT else float(values.max())
    scaled = np.clip(np.rint(values * (255.0 / full)), 0, 255).astype(np.uint8)
    return Image.fromarray(scaled, mode="L")


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB in its displayed orientation (EXIF applied, high bit depths scaled).
    Always a new image: the argument is left as it is."""
    oriented = ImageOps.exif_transpose(image)
    if oriented is None:  # older Pillow returns None only with in_place=True
        oriented = image
    if oriented.mode.startswith("I;16") or oriented.mode in ("I", "F"):
        oriented = _scaled_to_8_bit(oriented)
    return oriented.convert("RGB")


def read_rgb(path: str | Path) -> Image.Image:
    """Decode the image file ``path`` as 8-bit RGB in its displayed orientation (see the module
    docstring). Raises ``OSError`` naming the file when it is missing or cannot be decoded."""
    path = Path(path)
    try:
        with Image.open(path) as opened:
            return to_rgb(opened)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"image {path} does not exist") from err
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise OSError(f"image {path} cannot be decoded: {err}") from err
