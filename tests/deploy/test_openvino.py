from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rtdetr_spartan.deploy.compare import paired_differences
from rtdetr_spartan.deploy.openvino_runtime import OpenVinoPredictor, openvino_bf16_supported, openvino_config
from rtdetr_spartan.deploy.predictor import ModelFileError
from rtdetr_spartan.deploy.runtime import OnnxPredictor
from tests.deploy.deploy_utils import R18_CONFIG, export_config, min_matched_fraction

pytestmark = pytest.mark.slow  # every test here exports a full detector to ONNX

SIZE = 128
# Share of detections that must have a partner within 1e-3: a few may differ through near-tied
# query selection of the random-weight model; a wrong graph matches almost none.
MIN_MATCHED = 0.9


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """R18 exported with a fixed batch of 1 and dynamic height and width."""
    path = tmp_path_factory.mktemp("openvino") / "r18.onnx"
    export_config(R18_CONFIG, (), path, SIZE, dynamic_batch=False, dynamic_size=True)
    return path


def _inputs(size: tuple[int, int], count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.random((count, 3, *size), dtype=np.float32)
    sizes = np.array([[160 + 20 * i, 120 - 10 * i] for i in range(count)], dtype=np.int64)
    return images, sizes


@pytest.mark.parametrize("threads", [1, 2])
def test_openvino_matches_onnxruntime_with_batch_chunks(exported: Path, threads: int) -> None:
    predictor = OpenVinoPredictor(exported, threads=threads)
    assert predictor.threads == threads and predictor.fixed_batch == 1
    assert predictor.input_size == (SIZE, SIZE) and predictor.info.class_names[0] == "person"
    images, sizes = _inputs((SIZE, SIZE), 3)
    got = predictor.run(images, sizes)
    ref = OnnxPredictor(exported, threads=threads).run(images, sizes)
    assert got[0].dtype == np.int64 and got[1].shape == (3, 300, 4) and got[2].shape == (3, 300)
    assert min_matched_fraction(ref, got, sizes, 1e-3) >= MIN_MATCHED
    assert np.median(paired_differences(ref, got, sizes)) <= 1e-5


def test_openvino_runs_a_dynamic_size_model_at_another_size(exported: Path) -> None:
    size = (SIZE + 32, SIZE + 64)
    predictor = OpenVinoPredictor(exported, input_size=size)
    assert predictor.input_size == size
    images, sizes = _inputs(size, 2, seed=1)
    ref = OnnxPredictor(exported, input_size=size).run(images, sizes)
    assert min_matched_fraction(ref, predictor.run(images, sizes), sizes, 1e-3) >= MIN_MATCHED


def test_another_graph_is_not_matched(exported: Path, tmp_path: Path) -> None:
    """The criterion is not vacuous: the same architecture with other weights fails it."""
    other = tmp_path / "other.onnx"
    export_config(R18_CONFIG, (), other, SIZE, dynamic_batch=False, dynamic_size=True, seed=1)
    images, sizes = _inputs((SIZE, SIZE), 1)
    ref = OnnxPredictor(exported).run(images, sizes)
    assert min_matched_fraction(ref, OpenVinoPredictor(other).run(images, sizes), sizes, 1e-3) < 0.5


def test_saved_ir_keeps_metadata_and_outputs(exported: Path, tmp_path: Path) -> None:
    from_onnx = OpenVinoPredictor(exported, threads=1, save_ir=tmp_path / "ir")
    from_ir = OpenVinoPredictor(tmp_path / "ir" / "model.xml", threads=1)
    assert (tmp_path / "ir" / "model.bin").is_file()
    assert from_ir.info.to_metadata() == from_onnx.info.to_metadata()
    assert from_ir.info.dynamic_size and from_ir.fixed_batch == 1
    images, sizes = _inputs((SIZE, SIZE), 2, seed=2)
    assert min_matched_fraction(from_onnx.run(images, sizes), from_ir.run(images, sizes), sizes, 1e-6) == 1.0


def test_save_ir_over_the_model_being_read_is_refused_and_saves_are_atomic(exported: Path, tmp_path: Path) -> None:
    ir = tmp_path / "ir"
    OpenVinoPredictor(exported, threads=1, save_ir=ir)
    before = {name: (ir / name).read_bytes() for name in ("model.xml", "model.bin")}
    with pytest.raises(ModelFileError, match=r"--save-ir .*ir would write over the model being read .*model.xml"):
        OpenVinoPredictor(ir / "model.xml", threads=1, save_ir=ir)
    assert {name: (ir / name).read_bytes() for name in before} == before  # untouched, not 0 bytes
    # saving over an IR that is not being read replaces both files and leaves no temporary ones
    other = tmp_path / "other.onnx"
    export_config(R18_CONFIG, (), other, SIZE, dynamic_batch=False, dynamic_size=True, seed=1)
    OpenVinoPredictor(other, threads=1, save_ir=ir)
    assert sorted(p.name for p in ir.iterdir()) == ["model.bin", "model.xml"]
    assert (ir / "model.bin").read_bytes() != before["model.bin"]
    images, sizes = _inputs((SIZE, SIZE), 1, seed=4)
    reloaded = OpenVinoPredictor(ir / "model.xml", threads=1).run(images, sizes)
    assert min_matched_fraction(OnnxPredictor(other).run(images, sizes), reloaded, sizes, 1e-3) >= MIN_MATCHED


def test_a_file_openvino_cannot_read_is_a_named_error(tmp_path: Path) -> None:
    (tmp_path / "junk.onnx").write_bytes(b"garbage" * 20)
    with pytest.raises(ModelFileError, match=r"junk.onnx is not a model OpenVINO can read"):
        OpenVinoPredictor(tmp_path / "junk.onnx")
    with pytest.raises(ModelFileError, match=r"is a folder, not a model file; it holds junk.onnx"):
        OpenVinoPredictor(tmp_path)


def test_ir_without_metadata_is_rejected(exported: Path, tmp_path: Path) -> None:
    import openvino as ov

    ov.save_model(ov.Core().read_model(str(exported)), str(tmp_path / "plain.xml"))
    with pytest.raises(ValueError, match="plain.xml.*metadata"):
        OpenVinoPredictor(tmp_path / "plain.xml")


def test_bfloat16_where_supported_else_a_clear_error(exported: Path) -> None:
    import openvino as ov

    if openvino_bf16_supported():
        predictor = OpenVinoPredictor(exported, precision="bfloat16")
        assert predictor.compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.bf16
        images, sizes = _inputs((SIZE, SIZE), 1)
        labels, boxes, scores = predictor.run(images, sizes)
        assert boxes.shape == (1, 300, 4) and np.isfinite(boxes).all() and np.isfinite(scores).all()
    else:
        with pytest.raises(ValueError, match="no bfloat16 support"):
            OpenVinoPredictor(exported, precision="bfloat16")
    # float32 is what the default asks for, even where OpenVINO would pick bfloat16 itself
    assert OpenVinoPredictor(exported).compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32


def test_bad_arguments_are_named(exported: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="precision must be one of.*'float16'"):
        openvino_config(precision="float16")
    with pytest.raises(ValueError, match="threads must be >= 1"):
        openvino_config(threads=0)
    with pytest.raises(FileNotFoundError, match="nope.onnx"):
        OpenVinoPredictor(tmp_path / "nope.onnx")


def test_static_size_model_rejects_another_size(tmp_path: Path) -> None:
    path = tmp_path / "static.onnx"
    export_config(R18_CONFIG, (), path, SIZE, dynamic_batch=True, dynamic_size=False)
    with pytest.raises(ValueError, match="dynamic-size"):
        OpenVinoPredictor(path, input_size=(SIZE * 2, SIZE))
    predictor = OpenVinoPredictor(path)
    assert predictor.fixed_batch is None
    images, sizes = _inputs((SIZE, SIZE), 3, seed=3)
    ref = OnnxPredictor(path).run(images, sizes)
    assert min_matched_fraction(ref, predictor.run(images, sizes), sizes, 1e-3) >= MIN_MATCHED
