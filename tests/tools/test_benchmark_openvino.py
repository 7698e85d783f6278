from __future__ import annotations

import json
from pathlib import Path

import onnx
import openvino
import pytest

from rtdetr_spartan.benchmark.flops import count_flops
from rtdetr_spartan.benchmark.profiling import read_profile_json
from rtdetr_spartan.deploy.export import DeployModel
from rtdetr_spartan.deploy.from_config import load_config
from rtdetr_spartan.deploy.openvino_runtime import OpenVinoPredictor, openvino_bf16_supported
from tests.deploy.deploy_utils import R18_CONFIG, export_config
from tools.benchmark import main

pytestmark = pytest.mark.slow  # every test here exports a full detector to ONNX

SIZE = 128


def _run(capsys: pytest.CaptureFixture[str], *extra: str) -> dict:
    argv = ["-c", str(R18_CONFIG), "--size", str(SIZE), "--runs", "2", "--warmup", "1", "--threads", "1", *extra]
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_openvino_backend_reports_the_same_model_as_onnxruntime(capsys: pytest.CaptureFixture[str]) -> None:
    ov = _run(capsys, "--backend", "openvino", "--batch", "2")
    ort = _run(capsys, "--backend", "onnxruntime", "--batch", "2")
    assert (ov["params"], ov["gflops"], ov["batch"], ov["threads"]) == (ort["params"], ort["gflops"], 2, 1)
    assert (ov["backend"], ov["openvino_version"], ov["openvino_precision"]) == (
        "openvino",
        openvino.__version__,
        "float32",
    )
    assert ort["openvino_version"] is None and ort["openvino_precision"] is None
    assert ov["throughput"] == pytest.approx(2 * 1000 / ov["latency_ms"], rel=1e-3)


def test_openvino_bfloat16_where_supported(capsys: pytest.CaptureFixture[str]) -> None:
    if openvino_bf16_supported():
        assert _run(capsys, "--backend", "openvino", "--ov-precision", "bfloat16")["openvino_precision"] == "bfloat16"
    else:
        with pytest.raises(ValueError, match="no bfloat16 support"):
            _run(capsys, "--backend", "openvino", "--ov-precision", "bfloat16")


def test_openvino_refuses_torch_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="openvino backend runs on the CPU"):
        _run(capsys, "--backend", "openvino", "--amp", "bfloat16")
    with pytest.raises(ValueError, match="options of the torch backend"):
        _run(capsys, "--backend", "openvino", "--compile")


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A fixed-batch R18 export at SIZE and the same model saved as OpenVINO IR (as an INT8 IR is)."""
    folder = tmp_path_factory.mktemp("saved")
    _, export = export_config(R18_CONFIG, (), folder / "model.onnx", SIZE, dynamic_batch=False)
    OpenVinoPredictor(export.path, save_ir=folder / "ir")
    return export.path, folder / "ir" / "model.xml"


def _conv_count(path: Path) -> int:
    return sum(node.op_type == "Conv" for node in onnx.load(str(path)).graph.node)


def test_openvino_profile_of_a_saved_ir(
    saved_models: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--onnx model.xml (what tools/quantize.py writes) is measured at its metadata's size and profiled
    in the requested precision: every executed node with its kernel, Convolution nodes in bf16 kernels."""
    onnx_path, ir = saved_models
    precision = "bfloat16" if openvino_bf16_supported() else "float32"
    argv = ["--onnx", str(ir), "--backend", "openvino", "--ov-precision", precision, "--runs", "1", "--warmup", "1"]
    assert main([*argv, "--threads", "1", "--profile", str(tmp_path / "ir")]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (result["size"], result["params"], result["model_file"]) == (SIZE, None, str(ir))
    profile = read_profile_json(tmp_path / "ir.json")
    assert result["profile_nodes"] == profile.nodes == len(profile.records) > 100
    assert profile.not_run > 0  # fused into their neighbours (activations, biases)
    assert all(r.impl and r.impl != "undef" for r in profile.records)
    convs = [r for r in profile.records if r.type == "Convolution"]
    assert 0 < len(convs) <= _conv_count(onnx_path)  # the backbone's and encoder's convs, some fused
    if precision == "bfloat16":
        assert all("bf16" in r.impl for r in convs), [r.impl for r in convs]
    assert sum(profile.share(r) for r in profile.records) == pytest.approx(1.0)
    assert "| Convolution |" in (tmp_path / "ir.md").read_text()


def test_onnxruntime_profile_of_a_saved_export(
    saved_models: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    onnx_path, _ = saved_models
    argv = ["--onnx", str(onnx_path), "--backend", "onnxruntime", "--runs", "2", "--warmup", "1", "--profile"]
    # With its config (at the default --size 640): params, and GFLOPs at the file's size.
    assert main([*argv, "--threads", "1", "--ort-optimization", "disable", "-c", str(R18_CONFIG)]) == 0
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])
    cfg = load_config(R18_CONFIG)
    model = cfg.build("model")
    params = sum(p.numel() for p in model.parameters())  # the training form's, as the tool reports
    module = DeployModel(model, cfg.build("postprocessor"))
    assert (result["size"], result["params"]) == (SIZE, params)
    assert result["gflops"] == pytest.approx(count_flops(module, SIZE) / 1e9, abs=1e-3)
    nodes = [n for n in onnx.load(str(onnx_path)).graph.node if n.op_type != "Constant"]  # constants: initializers
    assert result["profile_nodes"] == len(nodes)  # no rewrites: one row a node
    assert f"| Conv | {_conv_count(onnx_path)} |" in out


def test_a_fixed_batch_export_refuses_another_batch(saved_models: tuple[Path, Path]) -> None:
    onnx_path, ir = saved_models
    for path, backend in ((onnx_path, "onnxruntime"), (ir, "openvino")):
        with pytest.raises(ValueError, match="exported for batch 1, not 2"):
            main(["--onnx", str(path), "--backend", backend, "--batch", "2", "--runs", "1", "--threads", "1"])
