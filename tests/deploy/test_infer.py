"""deploy.infer at function level, on a predictor with fixed boxes: pictures drawn as the
detections say, the JSON records, output names and the refusals (the tool: tests/tools)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rtdetr_spartan.deploy.infer import (
    OutputOverwritesInputError,
    annotate_image,
    output_paths,
    run_inference,
    video_output_name,
)
from rtdetr_spartan.deploy.metadata import ModelInfo
from rtdetr_spartan.misc.images import draw_detections
from tests.deploy.deploy_utils import FixedBoxes

INFO = ModelInfo((32, 32), 2, {0: 1, 1: 2}, {0: "square", 1: "disc"})


def _predictor() -> FixedBoxes:
    # scores 0.9 and 0.5 (FixedBoxes' ramp): threshold 0.6 keeps only the square
    return FixedBoxes(INFO, labels=[0, 1], boxes=[[2, 3, 20, 18], [0, 0, 500, 500]])


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "inputs"
    folder.mkdir()
    Image.new("RGB", (40, 30), (90, 120, 150)).save(folder / "a.png")
    Image.new("RGB", (24, 24), (200, 10, 10)).save(folder / "b.gif")
    (folder / "broken.jpg").write_bytes(b"not an image")
    return folder


def test_pictures_hold_the_drawn_detections_and_json_their_records(tmp_path: Path) -> None:
    folder, out = _folder(tmp_path), tmp_path / "out"
    results = run_inference(_predictor(), folder, out, threshold=0.6)
    records = {r["file"]: r for r in results["images"]}
    assert json.loads((out / "detections.json").read_text()) == results
    assert {f: r["output"] for f, r in records.items()} == {"a.png": "a.png", "b.gif": "b.png"}
    (square,) = records["a.png"]["detections"]
    assert (square["name"], square["category_id"], square["box"], square["bbox"]) == (
        "square",
        1,
        [2.0, 3.0, 20.0, 18.0],
        [2.0, 3.0, 18.0, 15.0],
    )
    for name, output in (("a.png", "a.png"), ("b.gif", "b.png")):
        source = Image.open(folder / name).convert("RGB")
        expected = draw_detections(source, _predictor().predict([source], 0.6)[0])
        assert np.array_equal(np.asarray(Image.open(out / output)), np.asarray(expected))
    (error,) = results["errors"]  # the unreadable file is named; the others went on
    assert error["file"] == "broken.jpg" and "broken.jpg" in error["error"]


def test_annotate_image_writes_one_picture(tmp_path: Path) -> None:
    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    record = annotate_image(_predictor(), tmp_path / "a.png", tmp_path / "drawn.png", threshold=0.0)
    assert (record["file"], record["output"], record["width"], record["height"]) == ("a.png", "drawn.png", 40, 30)
    assert [d["name"] for d in record["detections"]] == ["square", "disc"]
    assert [d["box"] for d in record["detections"]][1] == [0.0, 0.0, 40.0, 30.0]  # clipped to the image
    assert Image.open(tmp_path / "drawn.png").getpixel((2, 10)) != (0, 0, 0)  # the square's left edge


def test_output_folders_that_are_or_hold_an_input_and_bad_thresholds_are_refused(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    before = sorted(p.name for p in folder.iterdir())
    with pytest.raises(OutputOverwritesInputError, match=r"output folder .*inputs is the input folder"):
        run_inference(_predictor(), folder, folder / ".." / "inputs")
    with pytest.raises(OutputOverwritesInputError, match=r"output folder .*inputs holds the input .*a.png"):
        run_inference(_predictor(), folder / "a.png", folder)
    with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\] \(a score\), got 1.5"):
        run_inference(_predictor(), folder, tmp_path / "out", threshold=1.5)
    assert sorted(p.name for p in folder.iterdir()) == before


def test_output_names() -> None:
    assert video_output_name(Path("a/clip.mp4")) == "clip.mp4"
    assert video_output_name(Path("clip.AVI")) == "clip_avi.mp4"
    assert video_output_name(Path("clip.webm")) == "clip_webm.mp4"


def test_output_names_are_unique_and_never_an_input(tmp_path: Path) -> None:
    inputs = [tmp_path / n for n in ("a.gif", "a.png", "clip.avi", "clip_avi.mp4", "x.bmp", "X.PNG")]
    outputs = output_paths(sorted(inputs), tmp_path / "out")
    assert {p.name: outputs[p].name for p in inputs} == {
        "a.gif": "a_2.png",  # a.png keeps its own name
        "a.png": "a.png",
        "clip.avi": "clip_avi_2.mp4",
        "clip_avi.mp4": "clip_avi.mp4",
        "x.bmp": "x_2.png",  # names are compared case-insensitively
        "X.PNG": "X.png",
    }
    with pytest.raises(OutputOverwritesInputError, match=r"output .*a.png would replace the input file"):
        output_paths([tmp_path / "a.gif", tmp_path / "a.png"], tmp_path)
