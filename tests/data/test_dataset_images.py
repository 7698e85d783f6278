"""The datasets decode images as displayed: 16-bit scaled to 8 bits, EXIF orientation applied."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from rtdetr_spartan.data.classification import ImageFolderDataset
from rtdetr_spartan.data.coco import CocoDetection, ImageReadError
from rtdetr_spartan.data.transforms import Compose
from tests.data.image_files import gradient_16_bit, save_16_bit_png, save_with_orientation


def write_annotations(path: Path, images: list[dict[str, Any]], annotations: list[dict[str, Any]]) -> Path:
    coco = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "thing"}]}
    path.write_text(json.dumps(coco))
    return path


def box(image_id: int, bbox: list[float], ann_id: int = 1) -> dict[str, Any]:
    area = bbox[2] * bbox[3]
    return {"id": ann_id, "image_id": image_id, "category_id": 1, "bbox": bbox, "area": area, "iscrowd": 0}


def test_16_bit_png_in_a_coco_dataset_is_not_white(tmp_path: Path) -> None:
    values = gradient_16_bit(8, 64)
    save_16_bit_png(tmp_path / "deep.png", values)
    image_record = {"id": 1, "file_name": "deep.png", "width": 64, "height": 8}
    ann_file = write_annotations(tmp_path / "ann.json", [image_record], [box(1, [0, 0, 32, 8])])
    image, _ = CocoDetection(tmp_path, ann_file)[0]
    pixels = np.asarray(image)
    assert (pixels == 255).mean() < 0.05  # PIL's convert("RGB") saturates nearly every pixel
    expected = np.rint(values * 255.0 / 65535)
    assert np.abs(pixels[..., 1].astype(float) - expected).max() <= 1


@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_rotated_image_is_sized_and_boxed_as_displayed(
    tmp_path: Path, orientation: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Stored 64x128, displayed 128x64: the file records the displayed size and its boxes are in
    that frame, so a box right of x=64 is kept whole (not clamped to the stored width)."""
    save_with_orientation(tmp_path / "phone.jpg", orientation, size=(64, 128))
    image_record = {"id": 7, "file_name": "phone.jpg", "width": 128, "height": 64}
    ann_file = write_annotations(tmp_path / "ann.json", [image_record], [box(7, [80, 8, 40, 48])])
    with caplog.at_level(logging.WARNING, logger="rtdetr_spartan.data.coco"):
        image, target = CocoDetection(tmp_path, ann_file)[0]
    assert image.size == (128, 64)
    assert target["orig_size"].tolist() == [128, 64] and target["size"].tolist() == [128, 64]
    assert target["boxes"].tolist() == [[80.0, 8.0, 120.0, 56.0]]
    assert target["boxes"].canvas_size == (64, 128)
    assert not caplog.records  # sizes agree, nothing clamped


def test_recorded_stored_size_of_a_rotated_image_is_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    save_with_orientation(tmp_path / "phone.jpg", 6, size=(64, 128))
    image_record = {"id": 7, "file_name": "phone.jpg", "width": 64, "height": 128}  # as stored, not as shown
    ann_file = write_annotations(tmp_path / "ann.json", [image_record], [box(7, [4, 4, 20, 20])])
    dataset = CocoDetection(tmp_path, ann_file)
    with caplog.at_level(logging.WARNING, logger="rtdetr_spartan.data.coco"):
        dataset[0]
        dataset[0]
    (record,) = caplog.records  # once per image
    message = record.getMessage()
    assert str(tmp_path / "phone.jpg") in message and "image id 7" in message
    assert "128x64 as displayed" in message and "records 64x128" in message and "EXIF orientation" in message


def test_image_folder_reads_16_bit_and_rotated_images_as_displayed(tmp_path: Path) -> None:
    (tmp_path / "cat").mkdir()
    save_16_bit_png(tmp_path / "cat" / "a.png", gradient_16_bit(8, 64))
    save_with_orientation(tmp_path / "cat" / "b.jpg", 6, size=(64, 128))
    dataset = ImageFolderDataset(tmp_path)
    deep, _ = dataset[0]
    assert (np.asarray(deep) == 255).mean() < 0.05
    rotated, _ = dataset[1]
    assert rotated.size == (128, 64)


def test_image_folder_names_an_unreadable_or_vanished_image(tmp_path: Path) -> None:
    (tmp_path / "cat").mkdir()
    save_16_bit_png(tmp_path / "cat" / "a.png", gradient_16_bit(4, 4))
    truncated = tmp_path / "cat" / "b.png"
    save_16_bit_png(truncated, np.random.default_rng(0).integers(0, 65535, (64, 64)))
    truncated.write_bytes(truncated.read_bytes()[:2000])
    dataset = ImageFolderDataset(tmp_path)
    with pytest.raises(ImageReadError, match=f"{truncated}.*cannot be decoded"):
        dataset[1]
    (tmp_path / "cat" / "a.png").unlink()
    with pytest.raises(ImageReadError, match=f"{tmp_path / 'cat' / 'a.png'} does not exist"):
        dataset[0]


def test_coco_dataset_tensors_follow_the_displayed_image(tmp_path: Path) -> None:
    """Through the usual transforms the image tensor is [3, H, W] of the displayed image."""
    save_with_orientation(tmp_path / "phone.jpg", 8, size=(64, 128))
    image_record = {"id": 1, "file_name": "phone.jpg", "width": 128, "height": 64}
    ann_file = write_annotations(tmp_path / "ann.json", [image_record], [box(1, [80, 8, 40, 48])])
    transforms = Compose([{"type": "ToImage"}, {"type": "ToDtype", "scale": True}])
    image, target = CocoDetection(tmp_path, ann_file, transforms=transforms)[0]
    assert tuple(image.shape) == (3, 64, 128) and image.dtype == torch.float32
    assert target["boxes"].tolist() == [[80.0, 8.0, 120.0, 56.0]]
