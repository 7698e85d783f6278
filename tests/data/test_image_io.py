from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rtdetr_spartan.data.image_io import read_rgb, to_rgb
from tests.data.image_files import ORIENTATION, gradient_16_bit, save_16_bit_png, save_with_orientation


def test_16_bit_png_is_scaled_not_saturated(tmp_path: Path) -> None:
    values = gradient_16_bit()
    image = read_rgb(save_16_bit_png(tmp_path / "deep.png", values))
    assert image.mode == "RGB" and image.size == (64, 8)
    pixels = np.asarray(image)
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
    assert pixels.min() == 0 and pixels.max() == 255  # PIL's convert("RGB") gives 255 nearly everywhere
    expected = np.rint(values.astype(np.float64) * 255 / 65535)
    assert np.abs(pixels[..., 0].astype(np.float64) - expected).max() <= 1


def test_16_bit_dark_image_stays_dark(tmp_path: Path) -> None:
    """A 16-bit image is scaled by its type's range, not stretched to its own maximum."""
    values = np.full((4, 4), 1000, dtype=np.uint16)  # 1.5% of full scale
    pixels = np.asarray(read_rgb(save_16_bit_png(tmp_path / "dark.png", values)))
    assert (pixels == 4).all()  # round(1000 * 255 / 65535)


@pytest.mark.parametrize(
    "orientation, size, red_corner",
    [
        (1, (64, 128), (0, 0)),  # as stored
        (3, (64, 128), (1, 1)),  # rotated 180 degrees: top-left goes bottom-right
        (6, (128, 64), (0, 1)),  # rotate 90 clockwise to display: top-left goes top-right
        (8, (128, 64), (1, 0)),  # rotate 90 counter-clockwise: top-left goes bottom-left
    ],
)
def test_exif_orientation_gives_the_displayed_image(
    tmp_path: Path, orientation: int, size: tuple[int, int], red_corner: tuple[int, int]
) -> None:
    image = read_rgb(save_with_orientation(tmp_path / f"o{orientation}.jpg", orientation))
    assert image.size == size
    w, h = size
    pixels = np.asarray(image).astype(int)
    row, col = red_corner
    y = h // 4 + row * h // 2
    x = w // 4 + col * w // 2
    assert pixels[y, x, 0] > 200 and pixels[y, x, 2] < 60  # red quadrant where it is displayed
    assert pixels[h - 1 - y, w - 1 - x, 2] > 200  # the opposite quadrant is blue


def test_to_rgb_leaves_its_argument_alone() -> None:
    image = Image.fromarray(gradient_16_bit())
    exif = image.getexif()
    exif[ORIENTATION] = 6
    image.info["exif"] = exif.tobytes()
    converted = to_rgb(image)
    assert converted.mode == "RGB" and converted.size == (8, 64)
    assert image.mode == "I;16" and image.size == (64, 8)


@pytest.mark.parametrize(
    "mode, colour, fmt, expected",
    [
        ("CMYK", (0, 255, 255, 0), "TIFF", (255, 0, 0)),
        ("LA", (128, 200), "PNG", (128, 128, 128)),
        ("RGBA", (10, 20, 30, 40), "PNG", (10, 20, 30)),
        ("I", 32768, "TIFF", (128, 128, 128)),
    ],
)
def test_other_modes_become_rgb(tmp_path: Path, mode: str, colour: object, fmt: str, expected: tuple) -> None:
    path = tmp_path / f"image.{fmt.lower()}"
    Image.new(mode, (6, 4), colour).save(path, format=fmt)  # type: ignore[arg-type]
    image = read_rgb(path)
    assert image.mode == "RGB" and image.size == (6, 4)
    assert np.abs(np.asarray(image).astype(int) - np.array(expected)).max() <= 1


def test_palette_image_keeps_its_colours(tmp_path: Path) -> None:
    image = Image.new("P", (4, 2))
    image.putpalette([0, 0, 0, 250, 10, 20] + [0] * (254 * 3))
    image.putpixel((1, 0), 1)
    image.save(tmp_path / "p.png")
    pixels = np.asarray(read_rgb(tmp_path / "p.png"))
    assert tuple(pixels[0, 1]) == (250, 10, 20) and tuple(pixels[0, 0]) == (0, 0, 0)


def test_missing_and_corrupt_files_are_named(tmp_path: Path) -> None:
    missing = tmp_path / "gone.png"
    with pytest.raises(FileNotFoundError, match=f"{missing}.*does not exist"):
        read_rgb(missing)
    corrupt = tmp_path / "fake.jpg"
    corrupt.write_text("<html>not a jpeg</html>")
    with pytest.raises(OSError, match=f"{corrupt}.*cannot be decoded"):
        read_rgb(corrupt)
    truncated = tmp_path / "half.png"
    noise = np.random.default_rng(0).integers(0, 65535, (64, 64))  # incompressible: cut mid-pixels
    save_16_bit_png(truncated, noise)
    truncated.write_bytes(truncated.read_bytes()[:2000])
    with pytest.raises(OSError, match=f"{truncated}.*cannot be decoded"):
        read_rgb(truncated)
