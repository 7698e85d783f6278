"""The quickstart's demo stage annotates as tools/infer.py does (deploy.infer), with the same
output names, pictures and image listing."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rtdetr_spartan.deploy.metadata import ModelInfo
from rtdetr_spartan.misc.images import draw_detections
from rtdetr_spartan.pipeline.deployment import annotate_images, validation_images
from tests.deploy.deploy_utils import FixedBoxes

INFO = ModelInfo((32, 32), 1, {0: 1}, {0: "square"})


def test_annotated_pictures_are_infers(tmp_path: Path) -> None:
    folder = tmp_path / "val"
    folder.mkdir()
    for name, color in (("000001.jpg", (200, 30, 30)), ("000000.png", (20, 90, 200)), ("000002.gif", (9, 9, 9))):
        Image.new("RGB", (48, 40), color).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    paths = validation_images(folder, 2)
    assert [p.name for p in paths] == ["000000.png", "000001.jpg"]  # name order, images only
    predictor = FixedBoxes(INFO, labels=[0], boxes=[[4, 4, 30, 30]])
    written = annotate_images(predictor, paths, tmp_path / "out", threshold=0.5)
    assert [p.name for p in written] == ["000000.png", "000001.jpg"]  # infer's names
    for source, picture in zip(paths, written):
        image = Image.open(source).convert("RGB")
        buffer = io.BytesIO()  # the drawing, encoded as the picture is (JPEG for .jpg)
        draw_detections(image, predictor.predict([image], 0.5)[0]).save(buffer, format=Image.open(picture).format)
        expected = np.asarray(Image.open(buffer).convert("RGB"), dtype=np.int16)
        drawn = np.asarray(Image.open(picture).convert("RGB"), dtype=np.int16)
        assert np.array_equal(drawn, expected)
        assert np.abs(drawn[4, 10] - np.asarray(image)[4, 10]).max() > 40  # the box's top edge is drawn


def test_a_folder_without_images_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no images \(.*\) in .*empty"):
        (tmp_path / "empty").mkdir()
        validation_images(tmp_path / "empty", 2)
