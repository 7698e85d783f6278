from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from rtdetr_spartan.deploy.export import (
    DeployModel,
    InputSizeError,
    check_input_size,
    complex_tensor_names,
    export_onnx,
    largest_stride,
)
from rtdetr_spartan.deploy.from_config import build_deploy_model, load_config
from rtdetr_spartan.deploy.metadata import ModelInfo
from tests.deploy.deploy_utils import R18_CONFIG, assert_detections_agree, export_config, spartan_t_config
from tests.parity_utils import synthetic_scenes


def _sizes(batch: int, height: int, width: int) -> np.ndarray:
    """Distinct original (w, h) per image, so the pixel scaling of each image is checked."""
    return np.array([[width + 100 * i, height - 40 * i] for i in range(batch)], dtype=np.int64)


def _assert_agree(module: DeployModel, session: ort.InferenceSession, batch: int, height: int, width: int) -> None:
    images = synthetic_scenes(batch, height, width, seed=batch)
    sizes = _sizes(batch, height, width)
    got = session.run(None, {"images": images.numpy(), "orig_target_sizes": sizes})
    with torch.no_grad():
        ref = [t.numpy() for t in module(images, torch.from_numpy(sizes))]
    assert [a.shape for a in got] == [a.shape for a in ref]
    assert [a.dtype for a in got] == [np.int64, np.float32, np.float32]
    assert_detections_agree(tuple(ref), tuple(got), sizes)


@pytest.fixture(scope="module")
def r18_640(tmp_path_factory: pytest.TempPathFactory) -> tuple[DeployModel, onnx.ModelProto, ort.InferenceSession]:
    """RT-DETR-R18 at its real input size, dynamic batch (one file for every batch size)."""
    path = tmp_path_factory.mktemp("r18") / "r18.onnx"
    module, result = export_config(R18_CONFIG, (), path, 640)
    assert result.opset == 17 and result.max_abs_diff is None
    return module, onnx.load(str(path)), ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def spartan_dynamic(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[DeployModel, onnx.ModelProto, ort.InferenceSession]:
    """The SpaRTAN-T detector with dynamic batch, height and width (small trace size)."""
    config, overrides = spartan_t_config()
    path = tmp_path_factory.mktemp("spartan") / "spartan_t.onnx"
    module, _ = export_config(config, overrides, path, 192, dynamic_size=True)
    return module, onnx.load(str(path)), ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.slow
def test_r18_batch_1_and_3_from_one_file_match_torch(r18_640) -> None:
    module, _, session = r18_640
    for batch in (1, 3):
        _assert_agree(module, session, batch, 640, 640)


@pytest.mark.slow
def test_r18_graph_interface_and_metadata(r18_640) -> None:
    _, model, _ = r18_640
    dims = {
        v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in (*model.graph.input, *model.graph.output)
    }
    assert dims == {
        "images": ["N", 3, 640, 640],
        "orig_target_sizes": ["N", 2],
        "labels": ["N", 300],
        "boxes": ["N", 300, 4],
        "scores": ["N", 300],
    }
    assert {o.domain or "ai.onnx": o.version for o in model.opset_import}["ai.onnx"] == 17
    assert any(n.op_type == "GridSample" for n in model.graph.node)
    info = ModelInfo.from_metadata({p.key: p.value for p in model.metadata_props})
    assert info.input_size == (640, 640) and info.num_classes == 80 and info.remap_mscoco_category
    assert info.dynamic_batch and not info.dynamic_size
    assert info.class_name(0) == "person" and info.category_id(79) == 90 and info.class_name(79) == "toothbrush"
    assert json.loads(next(p.value for p in model.metadata_props if p.key == "input_size")) == [640, 640]


@pytest.mark.slow
def test_no_complex_tensor_types(r18_640, spartan_dynamic) -> None:
    for _, model, _ in (r18_640, spartan_dynamic):
        inferred = onnx.shape_inference.infer_shapes(model)
        graph = inferred.graph
        elem_types = {v.type.tensor_type.elem_type for v in (*graph.input, *graph.output, *graph.value_info)}
        elem_types |= {t.data_type for t in graph.initializer}
        assert len(graph.value_info) > 100  # shape inference did reach the inner tensors
        assert not elem_types & {onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128}
        assert complex_tensor_names(model) == []


def test_complex_tensor_check_finds_complex_initializer() -> None:
    weight = onnx.helper.make_tensor("w", onnx.TensorProto.COMPLEX64, [2], [1 + 0j, 1j])
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["w"], ["y"])],
        "g",
        [],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.COMPLEX64, [2])],
        [weight],
    )
    assert set(complex_tensor_names(onnx.helper.make_model(graph))) == {"w", "y"}


@pytest.mark.slow
def test_spartan_dynamic_size_runs_at_two_sizes(spartan_dynamic) -> None:
    module, model, session = spartan_dynamic
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["N", 3, "H", "W"]
    _assert_agree(module, session, 1, 192, 192)
    _assert_agree(module, session, 2, 256, 160)


@pytest.mark.slow
def test_spartan_fixed_shape_export_matches_torch(tmp_path) -> None:
    """Without dynamic axes the export traces SpaRTAN's fixed-shape form (gates as resized
    maps, see nn/backbones/spartan_layers.py); it still matches PyTorch."""
    config, overrides = spartan_t_config()
    path = tmp_path / "spartan_static.onnx"
    module, _ = export_config(config, overrides, path, 160, dynamic_batch=False)
    model = onnx.load(str(path))
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 160, 160]
    assert sum(n.op_type == "Resize" for n in model.graph.node) > 20
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    _assert_agree(module, session, 1, 160, 160)


def test_export_rejects_opset_without_grid_sample(tmp_path) -> None:
    info = ModelInfo((64, 64), 80, {}, {})
    with pytest.raises(ValueError, match="GridSample"):
        export_onnx(torch.nn.Identity(), tmp_path / "x.onnx", info, opset=15)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def r18_module() -> DeployModel:
    torch.manual_seed(0)
    return build_deploy_model(load_config(R18_CONFIG))


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((0, 0), r"input_size 0 0: height and width must be positive multiples of the model's largest stride 32"),
        ((-64, 640), r"input_size -64 640: .* positive multiples .* stride 32, e\.g\. 32 640"),
        ((100, 100), r"input_size 100 100: .* stride 32, e\.g\. 96 96 or 128 128"),
        ((64, 64), r"input_size 64 64: gives 84 anchors, fewer than the decoder's 300 queries; use at least 128 128"),
    ],
    ids=["zero", "negative", "not-a-multiple", "too-few-anchors"],
)
def test_export_rejects_sizes_the_model_cannot_run(r18_module, tmp_path, size, expected) -> None:
    info = ModelInfo(size, 80, {}, {})
    with pytest.raises(InputSizeError, match=expected):
        export_onnx(r18_module, tmp_path / "x.onnx", info)
    assert not (tmp_path / "x.onnx").exists()  # refused before tracing


def test_largest_stride_is_read_from_the_model() -> None:
    """Not hard-coded: a decoder with a fourth level (stride 64) needs multiples of 64."""
    cfg = load_config(R18_CONFIG, ["RTDETRTransformer.num_levels=4"])
    module = build_deploy_model(cfg)
    assert largest_stride(module) == 64 and largest_stride(torch.nn.Linear(2, 2)) is None
    with pytest.raises(InputSizeError, match=r"input_size 96 96: .* stride 64, e\.g\. 64 64 or 128 128") as info:
        check_input_size((96, 96), module)
    assert info.value.message("--size").startswith("--size 96 96: ")
    check_input_size((128, 192), module)  # multiples of 64 with 16 * 24 + 8 * 12 + 4 * 6 + 2 * 3 = 510 anchors


@pytest.mark.slow
def test_export_tool_names_the_size_argument(capsys, tmp_path) -> None:
    from tools.export_onnx import main

    with pytest.raises(SystemExit) as info:
        main(["-c", str(R18_CONFIG), "--size", "0", "0", "-o", str(tmp_path / "m.onnx")])
    assert info.value.code == 2
    assert "argument --size 0 0: height and width must be positive multiples of the model's largest stride 32" in (
        capsys.readouterr().err
    )
    # without --size the size is the config's, and the message says so
    sizes = ["HybridEncoder.eval_spatial_size=[100,100]", "RTDETRTransformer.eval_spatial_size=[100,100]"]
    with pytest.raises(SystemExit):
        main(["-c", str(R18_CONFIG), "-u", *sizes, "-o", str(tmp_path / "m.onnx")])
    assert f"{R18_CONFIG}: eval_spatial_size 100 100: " in capsys.readouterr().err


def test_load_config_takes_a_loaded_config_as_it_is() -> None:
    cfg = load_config(R18_CONFIG, ["epochs=3"])
    assert load_config(cfg) is cfg and cfg.epochs == 3
    with pytest.raises(ValueError, match=r"overrides \['epochs=4'\] given with a loaded config"):
        load_config(cfg, ["epochs=4"])
