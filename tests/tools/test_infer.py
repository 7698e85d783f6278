from __future__ import annotations

import json
import re
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from rtdetr_spartan.data.shapes import make_detection_dataset
from rtdetr_spartan.deploy.from_config import load_config
from rtdetr_spartan.deploy.infer import OutputOverwritesInputError
from rtdetr_spartan.deploy.predictor import ModelFileError
from rtdetr_spartan.deploy.runtime import OnnxPredictor
from rtdetr_spartan.deploy.video import VideoReader, VideoWriter
from tests.deploy.deploy_utils import R18_CONFIG, assert_detections_agree, min_matched_fraction
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


@pytest.mark.slow
def test_boxes_are_clipped_to_the_image(exported: dict[str, Path], tmp_path: Path) -> None:
    predictor = OnnxPredictor(exported["onnx"])
    labels = np.array([1, 2])
    boxes = np.array([[-7.6, 3.0, 50.0, 4008.0], [10.0, -1.0, 120.0, 90.0]], dtype=np.float32)
    scores = np.array([0.9, 0.8], dtype=np.float32)
    clipped = predictor.detections(labels, boxes, scores, 0.5, image_size=(100, 4000))
    assert [d.box for d in clipped] == [(0.0, 3.0, 50.0, 4000.0), (10.0, 0.0, 100.0, 90.0)]
    raw = predictor.detections(labels, boxes, scores, 0.5)
    assert raw[0].box[0] == pytest.approx(-7.6)  # run()/evaluation keep the model's raw boxes
    image_path = exported["images"] / "000000.jpg"
    assert (
        infer_main(["--onnx", str(exported["onnx"]), "-i", str(image_path), "-o", str(tmp_path), "--threshold", "0"])
        == 0
    )
    (record,) = json.loads((tmp_path / "detections.json").read_text())["images"]
    all_boxes = np.array([d["box"] for d in record["detections"]])
    assert all_boxes.min() >= 0 and all_boxes[:, [0, 2]].max() <= 160 and all_boxes[:, [1, 3]].max() <= 160


@pytest.mark.slow
def test_infer_with_openvino_matches_onnxruntime(exported: dict[str, Path], tmp_path: Path) -> None:
    image_path = exported["images"] / "000001.jpg"
    records = {}
    for runtime in ("onnxruntime", "openvino"):
        argv = ["--onnx", str(exported["onnx"]), "--runtime", runtime, "-i", str(image_path), "--threshold", "0"]
        if runtime == "openvino":
            argv += ["--save-ir", str(tmp_path / "ir")]
        assert infer_main([*argv, "-o", str(tmp_path / runtime)]) == 0
        records[runtime] = json.loads((tmp_path / runtime / "detections.json").read_text())["images"][0]
    assert (tmp_path / "ir" / "model.xml").is_file()
    sizes = np.array([[160, 160]])
    assert min_matched_fraction(_arrays(records["onnxruntime"]), _arrays(records["openvino"]), sizes, 1e-3) >= 0.9


@pytest.mark.slow
def test_openvino_only_options_are_rejected_for_onnxruntime(exported: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        infer_main(["--onnx", str(exported["onnx"]), "--precision", "bfloat16", "-i", "x.jpg", "-o", str(tmp_path)])


def _make_video(path: Path, frames: int, size: tuple[int, int], fps: int) -> None:
    """A moving white square on grey, written with the same library the tool reads with."""
    with VideoWriter(path, size[0], size[1], fps) as writer:
        for i in range(frames):
            pixels = np.full((size[1], size[0], 3), 90, dtype=np.uint8)
            pixels[20:60, 10 + 8 * i : 50 + 8 * i] = 255
            writer.write(Image.fromarray(pixels))


@pytest.mark.slow
def test_video_in_annotated_video_out(exported: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "inputs"
    folder.mkdir()
    _make_video(folder / "clip.avi", frames=7, size=(176, 144), fps=12)
    (folder / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)
    Image.open(exported["images"] / "000000.jpg").save(folder / "still.jpg")
    out = tmp_path / "out"
    argv = ["--onnx", str(exported["onnx"]), "--runtime", "openvino", "-i", str(folder), "-o", str(out)]
    assert infer_main([*argv, "--threshold", "0.01"]) == 1  # the broken video is an error entry
    results = json.loads((out / "detections.json").read_text())
    assert [e["file"] for e in results["errors"]] == ["broken.mp4"] and "broken.mp4" in results["errors"][0]["error"]
    assert [r["file"] for r in results["images"]] == ["still.jpg"]
    (video,) = results["videos"]
    assert (video["file"], video["output"], video["width"], video["height"]) == ("clip.avi", "clip_avi.mp4", 176, 144)
    assert video["fps"] == pytest.approx(12.0)
    assert [f["frame"] for f in video["frames"]] == list(range(7))
    assert [f["time"] for f in video["frames"]] == pytest.approx([i / 12 for i in range(7)], abs=1e-3)
    assert all(f["detections"] and f["detections"][0]["score"] >= 0.01 for f in video["frames"])
    with VideoReader(out / "clip_avi.mp4") as reader:
        assert (reader.info.width, reader.info.height, reader.info.fps) == (176, 144, 12)
        written = list(reader)
    assert len(written) == 7
    # each written frame is the input frame with the first detection's box drawn on it
    first = video["frames"][3]["detections"][0]["box"]
    with VideoReader(folder / "clip.avi") as reader:
        original = [image for _, _, image in reader][3]
    drawn = np.asarray(written[3][2], dtype=np.int16)
    assert np.abs(drawn - np.asarray(original, dtype=np.int16)).max() > 100
    x0, y0 = int(round(first[0])), int(round(first[1]))
    edge = drawn[min(max(y0, 0), 143), min(max(x0 + 2, 0), 175)]
    assert (
        np.abs(edge - np.asarray(original, dtype=np.int16)[min(max(y0, 0), 143), min(max(x0 + 2, 0), 175)]).max() > 30
    )


def test_output_folder_that_is_or_holds_an_input_is_refused(exported: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.open(exported["images"] / "000000.jpg").save(folder / "a.png")
    original = (folder / "a.png").read_bytes()
    onnx = ["--onnx", str(exported["onnx"])]
    with pytest.raises(OutputOverwritesInputError, match=r"output folder .*photos is the input folder"):
        infer_main([*onnx, "-i", str(folder), "-o", str(folder / ".." / "photos")])
    with pytest.raises(OutputOverwritesInputError, match=r"output folder .*photos holds the input .*a.png"):
        infer_main([*onnx, "-i", str(folder / "a.png"), "-o", str(folder)])
    assert sorted(p.name for p in folder.iterdir()) == ["a.png"] and (folder / "a.png").read_bytes() == original
    assert infer_main([*onnx, "-i", str(folder), "-o", str(folder / "annotated")]) == 0  # a subfolder is fine


def test_colliding_output_names_get_a_suffix(exported: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "inputs"
    folder.mkdir()
    _make_video(folder / "clip.avi", frames=2, size=(96, 80), fps=10)
    _make_video(folder / "clip_avi.mp4", frames=3, size=(96, 80), fps=10)
    out = tmp_path / "out"
    assert infer_main(["--onnx", str(exported["onnx"]), "-i", str(folder), "-o", str(out)]) == 0
    videos = {v["file"]: v for v in json.loads((out / "detections.json").read_text())["videos"]}
    assert {name: v["output"] for name, v in videos.items()} == {
        "clip.avi": "clip_avi_2.mp4",
        "clip_avi.mp4": "clip_avi.mp4",
    }
    for name, video in videos.items():  # each output holds its own input's frames
        with VideoReader(out / video["output"]) as reader:
            assert len(list(reader)) == len(video["frames"]) == {"clip.avi": 2, "clip_avi.mp4": 3}[name]


def test_bad_threshold_model_paths_and_empty_video_are_named(
    exported: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = str(exported["images"] / "000000.jpg")
    with pytest.raises(SystemExit):
        infer_main(["--onnx", str(exported["onnx"]), "-i", image, "-o", str(tmp_path), "--threshold", "1.5"])
    assert "argument --threshold: a score threshold lies in [0, 1], got 1.5" in capsys.readouterr().err
    with pytest.raises(ModelFileError, match=r"is a folder, not a model file; it holds r18.onnx"):
        infer_main(["--onnx", str(exported["onnx"].parent), "-i", image, "-o", str(tmp_path / "o")])
    import openvino as ov

    ov.save_model(ov.Core().read_model(str(exported["onnx"])), str(tmp_path / "model.xml"))
    with pytest.raises(ModelFileError, match="is an OpenVINO IR, not an ONNX model; use --runtime openvino"):
        infer_main(["--onnx", str(tmp_path / "model.xml"), "-i", image, "-o", str(tmp_path / "o")])
    folder = tmp_path / "videos"
    folder.mkdir()
    with av.open(str(folder / "empty.avi"), mode="w") as container:  # a stream and no frame
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height = 64, 48
        container.start_encoding()
    assert infer_main(["--onnx", str(exported["onnx"]), "-i", str(folder), "-o", str(tmp_path / "v")]) == 1
    (error,) = json.loads((tmp_path / "v" / "detections.json").read_text())["errors"]
    assert error["file"] == "empty.avi" and re.search(r"video .*empty.avi has no frames", error["error"])
    assert sorted(p.name for p in (tmp_path / "v").iterdir()) == ["detections.json"]  # no empty MP4 left


def test_exif_rotated_and_16_bit_images_are_read_as_displayed(exported: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "inputs"
    folder.mkdir()
    stored = Image.open(exported["images"] / "000000.jpg").convert("RGB").resize((160, 96))
    exif = stored.getexif()
    exif[0x0112] = 6  # stored landscape, displayed rotated 90 degrees clockwise (portrait)
    stored.save(folder / "phone.jpg", exif=exif.tobytes(), quality=95)
    with Image.open(folder / "phone.jpg") as decoded:  # the same decoded pixels, turned by hand
        decoded.transpose(Image.Transpose.ROTATE_270).save(folder / "upright.png")
    out = tmp_path / "out"
    assert infer_main(["--onnx", str(exported["onnx"]), "-i", str(folder), "-o", str(out), "--threshold", "0"]) == 0
    records = {r["file"]: r for r in json.loads((out / "detections.json").read_text())["images"]}
    phone, upright = records["phone.jpg"], records["upright.png"]
    assert (phone["width"], phone["height"]) == (upright["width"], upright["height"]) == (96, 160)
    assert Image.open(out / phone["output"]).size == (96, 160)
    assert_detections_agree(_arrays(upright), _arrays(phone), np.array([[96, 160]]))
    ramp = np.linspace(0, 65535, 160 * 120).reshape(120, 160).astype(np.uint16)
    sixteen = tmp_path / "deep"
    sixteen.mkdir()
    Image.fromarray(ramp).save(sixteen / "deep.png")
    assert (
        infer_main(["--onnx", str(exported["onnx"]), "-i", str(sixteen), "-o", str(tmp_path / "d"), "--threshold", "1"])
        == 0
    )
    drawn = np.asarray(Image.open(tmp_path / "d" / "deep.png").convert("L"), dtype=np.float64)
    assert abs(drawn.mean() - 127.5) < 3 and drawn.min() < 5  # the ramp as 8 bits, not all white
