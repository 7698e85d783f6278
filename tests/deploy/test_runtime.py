from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from rtdetr_spartan.data.categories import MSCOCO_CATEGORY_TO_NAME, MSCOCO_LABEL_TO_CATEGORY
from rtdetr_spartan.data.transforms import Compose
from rtdetr_spartan.deploy.loading import load_predictor
from rtdetr_spartan.deploy.metadata import ModelInfo
from rtdetr_spartan.deploy.predictor import ModelFileError, preprocess
from rtdetr_spartan.deploy.runtime import OnnxPredictor
from rtdetr_spartan.deploy.torch_predictor import TorchPredictor
from tests.deploy.deploy_utils import R18_CONFIG, assert_detections_agree, export_config

SIZE = 128  # smallest stride-32 size with >= 300 anchors (num_queries)


def _image(width: int, height: int, seed: int, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels).convert(mode)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):
    """R18 exported with a FIXED batch of 1 but dynamic height and width; (module, path)."""
    path = tmp_path_factory.mktemp("runtime") / "r18_batch1_dynamic_size.onnx"
    module, _ = export_config(R18_CONFIG, (), path, SIZE, dynamic_batch=False, dynamic_size=True)
    return module, path


def _assert_both_agree(module, predictor: OnnxPredictor, images: list[Image.Image]) -> None:
    batch = np.stack([preprocess(im, predictor.input_size).numpy() for im in images])
    sizes = np.array([im.size for im in images], dtype=np.int64)
    got = predictor.run(batch, sizes)
    ref = TorchPredictor(module, predictor.info).run(batch, sizes)
    assert got[0].shape == (len(images), 300)
    assert_detections_agree(ref, got, sizes)


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA"])
def test_preprocess_equals_validation_transforms(mode: str) -> None:
    image = _image(70, 50, seed=1, mode=mode)
    validation = Compose(
        [{"type": "Resize", "size": [SIZE, SIZE]}, {"type": "ToImage"}, {"type": "ToDtype", "scale": True}]
    )
    expected = validation(image.convert("RGB"))
    got = preprocess(image, (SIZE, SIZE))
    assert got.dtype == torch.float32 and got.shape == (3, SIZE, SIZE)
    assert torch.equal(got, expected.as_subclass(torch.Tensor))


@pytest.mark.slow  # exports a full detector (module fixture)
def test_onnx_predictor_matches_torch_with_batch_chunks(exported) -> None:
    module, path = exported
    predictor = OnnxPredictor(path, threads=1)
    assert predictor.session.get_session_options().intra_op_num_threads == 1
    assert predictor.input_size == (SIZE, SIZE) and predictor.fixed_batch == 1
    images = [_image(120 + 10 * i, 90 - 5 * i, seed=i) for i in range(3)]
    _assert_both_agree(module, predictor, images)  # three runs of the batch-1 graph


@pytest.mark.slow  # exports a full detector (module fixture)
def test_dynamic_size_predictor_runs_at_another_input_size(exported) -> None:
    module, path = exported
    predictor = OnnxPredictor(path, input_size=(SIZE + 32, SIZE + 64))
    assert predictor.input_size == (SIZE + 32, SIZE + 64)
    _assert_both_agree(module, predictor, [_image(200, 150, seed=5)])


@pytest.mark.slow  # exports a full detector (module fixture)
def test_detections_carry_names_and_category_ids(exported) -> None:
    _, path = exported
    predictor = OnnxPredictor(path)
    image = _image(160, 120, seed=7)
    everything = predictor.predict([image], threshold=0.0)[0]
    assert len(everything) == 300
    scores = [d.score for d in everything]
    assert scores == sorted(scores, reverse=True)
    for det in everything[:20]:
        assert det.category_id == MSCOCO_LABEL_TO_CATEGORY[det.label]
        assert det.name == MSCOCO_CATEGORY_TO_NAME[det.category_id]
        record = det.to_dict()
        assert record["bbox"][2] == pytest.approx(det.box[2] - det.box[0])
    threshold = float(np.median(scores))
    kept = predictor.predict([image], threshold=threshold)[0]
    assert 0 < len(kept) < 300 and all(d.score >= threshold for d in kept)


def test_missing_model_file_is_named(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.onnx"):
        OnnxPredictor(tmp_path / "nope.onnx")


def test_metadata_round_trip_and_errors() -> None:
    info = ModelInfo((480, 640), 4, {0: 3, 1: 7}, {0: "square", 1: "circle"}, dynamic_size=True)
    back = ModelInfo.from_metadata(info.to_metadata())
    assert (back.input_size, back.num_classes, back.label_to_category, back.class_names) == (
        (480, 640),
        4,
        {0: 3, 1: 7},
        {0: "square", 1: "circle"},
    )
    assert back.dynamic_size and back.dynamic_batch and not back.remap_mscoco_category
    assert back.class_name(3) == "class_3" and back.category_id(3) == 3
    with pytest.raises(ValueError, match="m.onnx.*input_size"):
        ModelInfo.from_metadata({"num_classes": "4"}, "m.onnx")
    with pytest.raises(ValueError, match="malformed"):
        ModelInfo.from_metadata({"num_classes": "4", "input_size": "[1]"}, "m.onnx")


def test_a_folder_an_openvino_ir_or_garbage_is_a_named_error(tmp_path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"not a protobuf" * 8)
    with pytest.raises(ModelFileError, match=r"is a folder, not a model file; it holds model.onnx: pass .*model.onnx"):
        OnnxPredictor(tmp_path)
    with pytest.raises(ModelFileError, match=r"model.onnx is not an ONNX model onnxruntime can load"):
        OnnxPredictor(tmp_path / "model.onnx")
    (tmp_path / "model.xml").write_text("<?xml version='1.0'?><net name='x' version='11'></net>")
    with pytest.raises(ModelFileError, match=r"model.xml is an OpenVINO IR, not an ONNX model; use --runtime openvino"):
        load_predictor(tmp_path / "model.xml")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelFileError, match="holds no .onnx or .xml file"):
        load_predictor(empty)


def test_preprocess_scales_16_bit_images_and_applies_exif_orientation() -> None:
    ramp = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)
    sixteen = Image.fromarray(ramp)
    assert sixteen.mode.startswith("I;16")
    got = preprocess(sixteen, (32, 32))
    assert 0.4 < float(got.mean()) < 0.6 and float(got.min()) < 0.05  # a ramp, not all white
    stored = _image(64, 32, seed=3)  # stored landscape, displayed portrait (orientation 6)
    exif = stored.getexif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    stored.save(buffer, format="PNG", exif=exif.tobytes())
    tagged = Image.open(io.BytesIO(buffer.getvalue()))
    displayed = stored.transpose(Image.Transpose.ROTATE_270)
    assert torch.equal(preprocess(tagged, (32, 32)), preprocess(displayed, (32, 32)))


@pytest.mark.slow  # exports a full detector (module fixture)
def test_predict_reports_boxes_in_the_displayed_orientation(exported) -> None:
    _, path = exported
    predictor = OnnxPredictor(path, threads=1)
    stored = _image(160, 96, seed=9)
    exif = stored.getexif()
    exif[0x0112] = 6  # displayed 96 wide, 160 tall
    buffer = io.BytesIO()
    stored.save(buffer, format="PNG", exif=exif.tobytes())
    tagged = Image.open(io.BytesIO(buffer.getvalue()))
    displayed = stored.transpose(Image.Transpose.ROTATE_270)
    got = predictor.predict([tagged], threshold=0.0)[0]
    assert got == predictor.predict([displayed], threshold=0.0)[0]  # the same pixels in the same session
    boxes = np.array([d.box for d in got])
    assert boxes[:, [0, 2]].max() <= 96 and boxes[:, [1, 3]].max() <= 160 and boxes[:, [1, 3]].max() > 96


def test_one_session_factory_applies_the_options_to_files_and_serialized_models(tmp_path) -> None:
    import onnx

    from rtdetr_spartan.deploy.runtime import onnxruntime_session

    path = tmp_path / "conv.onnx"
    conv = torch.nn.Conv2d(3, 2, 1)
    torch.onnx.export(conv, (torch.rand(1, 3, 4, 4),), str(path), input_names=["x"], dynamo=False)
    x = np.random.default_rng(0).random((1, 3, 4, 4), dtype=np.float32)
    expected = conv(torch.from_numpy(x)).detach().numpy()
    for model in (path, onnx.load(str(path)).SerializeToString()):
        session = onnxruntime_session(model, threads=1, optimization="basic")
        options = session.get_session_options()
        assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 1)
        assert str(options.graph_optimization_level) == "GraphOptimizationLevel.ORT_ENABLE_BASIC"
        np.testing.assert_allclose(session.run(None, {"x": x})[0], expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ModelFileError, match="the serialized model is not an ONNX model onnxruntime can load"):
        onnxruntime_session(b"not a model")
    with pytest.raises(
        ValueError, match=r"graph optimization must be one of \('disable', 'basic', 'extended', 'all'\)"
    ):
        onnxruntime_session(path, optimization="most")
    with pytest.raises(ValueError, match="threads must be >= 1, got 0"):
        onnxruntime_session(path, threads=0)
