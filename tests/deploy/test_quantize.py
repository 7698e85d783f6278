"""INT8 quantization (deploy.quantize) on a toy exported graph: the decoder scope stays in float,
metadata is carried, bad input gets a named error. The real detector is in tests/tools/test_quantize.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from torch import nn

from rtdetr_spartan.deploy.metadata import ModelInfo
from rtdetr_spartan.deploy.openvino_runtime import OpenVinoPredictor
from rtdetr_spartan.deploy.quantize import (
    INT8_IR_NAME,
    CalibrationError,
    calibration_from_config,
    calibration_from_folder,
    fake_quantize_consumers,
    float_scope,
    quantize_openvino,
    read_model_info,
)

SIZE = 32
INFO = ModelInfo((SIZE, SIZE), 3, {0: 3, 1: 7, 2: 11}, {0: "circle", 1: "square", 2: "triangle"}, extra={"opset": "17"})


class _Backbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.conv1(x)))


class _Decoder(nn.Module):
    """Conv + linear heads on the pooled features: 4 'queries' of 3 class logits and a box."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(16, 16, 1)
        self.norm = nn.LayerNorm(16)  # OpenVINO turns it into an "MVN_<n>" op without the module path
        self.score_head = nn.Linear(16, 4 * 3)
        self.box_head = nn.Linear(16, 4 * 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self.norm(self.proj(x).mean((2, 3)) + 1.0)
        return self.score_head(pooled).view(-1, 4, 3), self.box_head(pooled).view(-1, 4, 4).sigmoid()


class _Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = _Backbone()
        self.decoder = _Decoder()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.decoder(self.backbone(x))


class _Postprocessor(nn.Module):
    def forward(
        self, logits: torch.Tensor, boxes: torch.Tensor, sizes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scores, labels = logits.sigmoid().max(-1)
        return labels, boxes * sizes.repeat(1, 2)[:, None, :].to(boxes.dtype), scores


class _Toy(nn.Module):
    """The exported interface (images, orig_target_sizes -> labels, boxes, scores) with the
    module paths of the real DeployModel: /model/backbone, /model/decoder, /postprocessor."""

    def __init__(self) -> None:
        super().__init__()
        self.model = _Model()
        self.postprocessor = _Postprocessor()

    def forward(
        self, images: torch.Tensor, orig_target_sizes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.postprocessor(*self.model(images), orig_target_sizes)


def _export(path: Path, metadata: dict[str, str] | None) -> Path:
    torch.manual_seed(0)
    inputs = (torch.rand(1, 3, SIZE, SIZE), torch.tensor([[SIZE, SIZE]]))
    torch.onnx.export(
        _Toy().eval(),
        inputs,
        str(path),
        input_names=["images", "orig_target_sizes"],
        output_names=["labels", "boxes", "scores"],
        dynamic_axes={"images": {0: "N"}, "orig_target_sizes": {0: "N"}},
        opset_version=17,
        dynamo=False,
    )
    model = onnx.load(str(path))
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("quantize")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        pixels = rng.integers(0, 256, (40 + 4 * i, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"{i:02d}.png")
    onnx_path = _export(root / "toy.onnx", INFO.to_metadata())
    result = quantize_openvino(onnx_path, calibration_from_folder(images), root / "int8")
    return {"root": root, "images": images, "onnx": onnx_path, "int8": result.path}


def test_int8_model_quantizes_the_backbone_and_keeps_decoder_and_postprocessor_float(toy: dict[str, Path]) -> None:
    import openvino as ov

    assert toy["int8"] == toy["root"] / "int8" / INT8_IR_NAME and toy["int8"].with_suffix(".bin").is_file()
    model = ov.Core().read_model(str(toy["int8"]))
    consumers = [consumer for _, consumer in fake_quantize_consumers(model)]
    assert any(name.startswith("/model/backbone/") for name in consumers), consumers
    assert not [name for name in consumers if name.startswith(("/model/decoder/", "/postprocessor/"))], consumers
    # nor does one quantize a decoder op's output on its way to an op OpenVINO named itself
    # (the LayerNorm's MVN), nor does any op without a module path in the decoder read one
    quantizers = [op for op in model.get_ops() if op.get_type_name() == "FakeQuantize"]
    producers = [fq.input(0).get_source_output().get_node().get_friendly_name() for fq in quantizers]
    assert not [name for name in producers if name.startswith(("/model/decoder/", "/postprocessor/"))], producers
    assert not [name for name in consumers if name.startswith("MVN")], consumers
    assert not list((toy["root"] / "int8").glob(".*tmp*")), "temporary files left behind"


def test_int8_model_carries_the_export_metadata_and_runs(toy: dict[str, Path]) -> None:
    info = read_model_info(toy["int8"])
    assert info.to_metadata().items() >= {k: v for k, v in INFO.to_metadata().items() if k != "producer"}.items()
    assert json.loads(info.extra["quantization"])["images"] == 8
    float_model, int8_model = OpenVinoPredictor(toy["onnx"], threads=1), OpenVinoPredictor(toy["int8"], threads=1)
    assert int8_model.info.class_names == INFO.class_names and int8_model.input_size == (SIZE, SIZE)
    with Image.open(toy["images"] / "03.png") as opened:
        image = opened.convert("RGB")
    ref, got = float_model.predict([image], threshold=0.0)[0], int8_model.predict([image], threshold=0.0)[0]
    assert len(ref) == len(got) == 4
    # The toy's decoder runs in float on int8 backbone features: boxes stay within a few pixels
    # (of 48) and scores within a few hundredths; a wrong input scaling or an unquantized
    # (dequantization-free) graph would move them by far more or not at all.
    ref_boxes = np.array(sorted(d.box for d in ref))
    got_boxes = np.array(sorted(d.box for d in got))
    assert np.abs(ref_boxes - got_boxes).max() < 3.0


def test_quantizers_run_in_int8_in_the_compiled_model(toy: dict[str, Path]) -> None:
    runtime = OpenVinoPredictor(toy["int8"], threads=1).compiled.get_runtime_model()
    precisions = {
        op.get_friendly_name(): op.get_rt_info()["runtimePrecision"].astype(str)
        for op in runtime.get_ops()
        if "runtimePrecision" in op.get_rt_info()
    }
    int8 = [name for name, precision in precisions.items() if precision.lower() in ("i8", "u8")]
    assert any(name.startswith("/model/backbone/") for name in int8), precisions


def test_float_scope_matching_no_node_is_an_error(tmp_path: Path) -> None:
    import openvino as ov

    model = ov.Core().read_model(str(_export(tmp_path / "toy.onnx", INFO.to_metadata())))
    names = float_scope(model).names
    assert any(name.startswith("/model/decoder/proj/") for name in names) and any("MVN" in name for name in names)
    assert any(name.startswith("/postprocessor/") for name in names), names
    assert not [name for name in names if name.startswith("/model/backbone/")], names
    with pytest.raises(ValueError, match="no node name starts with '/model/head/'"):
        float_scope(model, ("/model/decoder/", "/model/head/"), "toy.onnx")


def test_model_without_metadata_is_refused(toy: dict[str, Path], tmp_path: Path) -> None:
    plain = _export(tmp_path / "plain.onnx", None)
    with pytest.raises(ValueError, match="plain.onnx: metadata lacks .*exported by rtdetr_spartan"):
        quantize_openvino(plain, calibration_from_folder(toy["images"]), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_model_path_errors(toy: dict[str, Path], tmp_path: Path) -> None:
    images = calibration_from_folder(toy["images"], subset=2)
    with pytest.raises(IsADirectoryError, match="is a folder"):
        quantize_openvino(tmp_path, images, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="missing.onnx does not exist"):
        quantize_openvino(tmp_path / "missing.onnx", images, tmp_path / "out")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_text("not a model\n")
    with pytest.raises(ValueError, match=rf"{garbage} is not a model OpenVINO can read"):
        quantize_openvino(garbage, images, tmp_path / "out")
    with pytest.raises(ValueError, match="is the input model"):
        quantize_openvino(toy["int8"], images, toy["int8"].parent)


def test_calibration_folder_errors_and_subset(toy: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="no calibration images: no images"):
        calibration_from_folder(tmp_path)
    with pytest.raises(CalibrationError, match="not a folder"):
        calibration_from_folder(tmp_path / "missing")
    with pytest.raises(ValueError, match="subset must be >= 1"):
        calibration_from_folder(toy["images"], subset=0)
    three = calibration_from_folder(toy["images"], subset=3)
    assert len(three) == 3 and three == sorted(three) and three == calibration_from_folder(toy["images"], subset=3)
    assert len(calibration_from_folder(toy["images"], subset=100)) == 8
    with pytest.raises(CalibrationError, match="no calibration images were given"):
        quantize_openvino(toy["onnx"], [], tmp_path / "out")


def _coco(root: Path, images: int, categories: int) -> dict[str, object]:
    folder = root / "val"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(images):
        Image.new("RGB", (40, 30), (i, 0, 0)).save(folder / f"{i}.png")
    ann = root / "val.json"
    coco = {
        "images": [{"id": i + 1, "file_name": f"{i}.png", "width": 40, "height": 30} for i in range(images)],
        "annotations": [],
        "categories": [{"id": 3 + c, "name": f"c{c}"} for c in range(categories)],
    }
    ann.write_text(json.dumps(coco))
    return {
        "num_classes": 3,
        "val_dataloader": {"dataset": {"img_folder": str(folder), "ann_file": str(ann)}},
    }


def test_calibration_from_config_reads_the_validation_images(tmp_path: Path) -> None:
    files = calibration_from_config(_coco(tmp_path, 5, 3), INFO, subset=4)
    assert len(files) == 4 and all(f.parent == tmp_path / "val" and f.is_file() for f in files)


def test_calibration_set_with_other_classes_is_refused(tmp_path: Path) -> None:
    cfg = _coco(tmp_path, 2, 3)
    with pytest.raises(
        CalibrationError, match="cfg.yml has num_classes=80 but the model was exported with num_classes=3"
    ):
        calibration_from_config({**cfg, "num_classes": 80}, INFO, source="cfg.yml")
    with pytest.raises(CalibrationError, match="cannot calibrate this model: num_classes=3 is smaller"):
        calibration_from_config(_coco(tmp_path / "five", 2, 5), INFO)


def test_empty_calibration_dataset_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="lists no images"):
        calibration_from_config(_coco(tmp_path, 0, 3), INFO)
    with pytest.raises(CalibrationError, match="no val_dataloader.dataset"):
        calibration_from_config({"num_classes": 3}, INFO)
