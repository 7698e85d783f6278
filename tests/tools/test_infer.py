from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rtdetr_spartan.data.shapes import make_detection_dataset
from rtdetr_spartan.deploy.from_config import load_config
from rtdetr_spartan.deploy.runtime import OnnxPredictor
from tests.deploy.deploy_utils import R18_CONFIG, assert_detections_agree
from tools.export_onnx import main as export_main
from tools.infer import main as infer_main

pytestmark = pytest.mark.slow  # every test exports a full model or runs a subprocess

SIZE = 128


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A seeded R18 checkpoint, its ONNX export (static batch, simplified) and a generated image."""
    root = tmp_path_factory.mktemp("infer")
    torch.manual_seed(0)
    model = load_config(R18_CONFIG).build("model")
    checkpoint = root / "r18.pth"
    torch.save({"model": model.state_dict()}, checkpoint)
    onnx_path = root / "r18.onnx"
    argv = [
        "-c",
        str(R18_CONFIG),
        "-r",
        str(checkpoint),
        "-o",
        str(onnx_path),
        "--size",
        str(SIZE),
        str(SIZE),
        "--static",
        "--simplify",
    ]
    assert export_main(argv) == 0
    make_detection_dataset(root / "shapes", train=0, val=2, size=160)
    return {"checkpoint": checkpoint, "onnx": onnx_path, "images": root / "shapes" / "val"}


def _arrays(record: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    dets = record["detections"]
    return (
        np.array([[d["label"] for d in dets]]),
        np.array([[d["box"] for d in dets]], dtype=np.float32),
        np.array([[d["score"] for d in dets]], dtype=np.float32),
    )


def test_infer_onnx_writes_picture_and_json(exported: dict[str, Path], tmp_path: Path) -> None:
    image_path = exported["images"] / "000000.jpg"
    assert (
        infer_main(["--onnx", str(exported["onnx"]), "-i", str(image_path), "-o", str(tmp_path), "--threshold", "0"])
        == 0
    )
    results = json.loads((tmp_path / "detections.json").read_text())
    assert results["input_size"] == [SIZE, SIZE] and results["errors"] == [] and results["videos"] == []
    (record,) = results["images"]
    assert (record["file"], record["width"], record["height"]) == ("000000.jpg", 160, 160)
    assert len(record["detections"]) == 300
    first = record["detections"][0]
    assert set(first) == {"label", "category_id", "name", "score", "box", "bbox"}
    assert isinstance(first["name"], str) and first["name"] != f"class_{first['label']}"
    drawn = Image.open(tmp_path / record["output"])
    original = Image.open(image_path).convert("RGB")
    assert drawn.size == original.size
    assert np.abs(np.asarray(drawn, dtype=np.int16) - np.asarray(original, dtype=np.int16)).max() > 100


def test_infer_torch_checkpoint_matches_onnx(exported: dict[str, Path], tmp_path: Path) -> None:
    image_path = exported["images"] / "000001.jpg"
    outputs = {}
    for name, source in (
        ("onnx", ["--onnx", str(exported["onnx"])]),
        (
            "torch",
            ["-c", str(R18_CONFIG), "-r", str(exported["checkpoint"]), "-u", f"eval_spatial_size=[{SIZE},{SIZE}]"],
        ),
    ):
        assert infer_main([*source, "-i", str(image_path), "-o", str(tmp_path / name), "--threshold", "0"]) == 0
        outputs[name] = json.loads((tmp_path / name / "detections.json").read_text())["images"][0]
    sizes = np.array([[160, 160]])
    assert_detections_agree(_arrays(outputs["torch"]), _arrays(outputs["onnx"]), sizes)


def test_folder_with_undecodable_video_degrades_with_message(exported: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "inputs"
    folder.mkdir()
    Image.open(exported["images"] / "000000.jpg").save(folder / "a.png")
    (folder / "clip.mp4").write_bytes(b"not a video")
    (folder / "notes.txt").write_text("ignored")
    out = tmp_path / "out"
    assert infer_main(["--onnx", str(exported["onnx"]), "-i", str(folder), "-o", str(out)]) == 1
    results = json.loads((out / "detections.json").read_text())
    assert [r["file"] for r in results["images"]] == ["a.png"] and (out / "a.png").is_file()
    (error,) = results["errors"]
    assert error["file"] == "clip.mp4" and "clip.mp4" in error["error"]
    assert "video" in error["error"]


def test_static_size_model_rejects_other_input_size(exported: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="dynamic-size"):
        OnnxPredictor(exported["onnx"], input_size=(SIZE * 2, SIZE))


def test_missing_input_is_reported(exported: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        infer_main(["--onnx", str(exported["onnx"]), "-i", str(tmp_path / "nowhere"), "-o", str(tmp_path)])
