"""Per-node profiles from the runtimes' own profilers, on a small conv net exported to ONNX."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from rtdetr_spartan.benchmark.profiling import (
    OpRecord,
    Profile,
    format_table,
    onnxruntime_records,
    openvino_records,
    precision_from_exec_type,
    read_profile_json,
    summarize_by_type,
    write_profile,
    write_profile_json,
)
from rtdetr_spartan.benchmark.run_profilers import OnnxRuntimeRunProfiler, TorchRunProfiler
from rtdetr_spartan.deploy.openvino_runtime import openvino_bf16_supported

SIZE = 64


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 1), nn.ReLU(), nn.Conv2d(32, 8, 3, padding=1)
    ).eval()


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("profiling") / "net.onnx"
    torch.onnx.export(_net(), (torch.rand(1, 3, SIZE, SIZE),), str(path), input_names=["x"], dynamo=False)
    return path


def _image() -> np.ndarray:
    return np.random.default_rng(0).random((1, 3, SIZE, SIZE), dtype=np.float32)


def _conv_nodes(path: Path) -> list[str]:
    return [node.name for node in onnx.load(str(path)).graph.node if node.op_type == "Conv"]


def _openvino_profile(path: Path, precision: str, warmup: int = 1, runs: int = 2) -> tuple[list[OpRecord], set[str]]:
    """Records of ``runs`` inferences after ``warmup``, and the names of the compiled graph's nodes."""
    import openvino as ov

    config = {
        ov.properties.enable_profiling: True,
        ov.properties.hint.inference_precision: ov.Type.bf16 if precision == "bfloat16" else ov.Type.f32,
        "INFERENCE_NUM_THREADS": 1,
    }
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    request = compiled.create_infer_request()
    for _ in range(warmup):
        request.infer({"x": _image()})
    before = list(request.get_profiling_info())
    for _ in range(runs):
        request.infer({"x": _image()})
    records = openvino_records(request.get_profiling_info(), warmup + runs, before, warmup)
    return records, {op.get_friendly_name() for op in compiled.get_runtime_model().get_ops()}


def test_openvino_profile_names_the_graph_convolutions(onnx_path: Path) -> None:
    records, graph_nodes = _openvino_profile(onnx_path, "float32")
    convs = [r for r in records if r.type == "Convolution"]
    assert len(convs) == len(_conv_nodes(onnx_path)) == 3
    assert {r.name for r in records} <= graph_nodes
    assert all(r.impl and r.impl != "undef" for r in records), records
    assert {r.precision for r in convs} == {"f32"}
    assert all(r.count == 1 for r in records)
    profile = Profile("openvino", 2, records)
    assert sum(profile.share(r) for r in records) == pytest.approx(1.0)
    assert profile.nodes == len(records)


@pytest.mark.skipif(not openvino_bf16_supported(), reason="this CPU has no bfloat16 in OpenVINO")
def test_openvino_bfloat16_request_runs_bf16_kernels(onnx_path: Path) -> None:
    records, _ = _openvino_profile(onnx_path, "bfloat16")
    convs = [r for r in records if r.type == "Convolution"]
    assert len(convs) == 3 and all("bf16" in r.impl and r.precision == "bf16" for r in convs), convs


def test_openvino_window_excludes_the_warm_up() -> None:
    """The CPU plugin reports means since compiling: 2 inferences at a mean of 10 ms, then 4 at 6 ms,
    leave 2 ms per inference for the last two; nodes that did not run are left out."""

    def info(name: str, ms: float, status: str = "EXECUTED") -> SimpleNamespace:
        return SimpleNamespace(
            node_name=name,
            node_type="Convolution",
            exec_type="brgconv_avx512_amx_1x1_bf16",
            real_time=timedelta(milliseconds=ms),
            status=f"Status.{status}",
        )

    records = openvino_records([info("conv", 6.0), info("relu", 0.0, "NOT_RUN")], 4, [info("conv", 10.0)], 2)
    assert records == [OpRecord("conv", "Convolution", "brgconv_avx512_amx_1x1_bf16", "bf16", 2.0, 1.0)]
    with pytest.raises(ValueError, match="no profiled inferences"):
        openvino_records([info("conv", 6.0)], 2, [info("conv", 6.0)], 2)


@pytest.mark.parametrize(
    "exec_type, precision",
    [
        ("brgconv_avx512_amx_1x1_bf16", "bf16"),
        ("jit_avx512_amx_bf16", "bf16"),
        ("ref_any_f32", "f32"),
        ("brgconv_avx512_amx_1x1_I8", "i8"),
        ("jit_avx512_amx_u8", "u8"),
        ("undef", ""),
    ],
)
def test_precision_from_exec_type(exec_type: str, precision: str) -> None:
    assert precision_from_exec_type(exec_type) == precision


def _onnxruntime_session(path: Path, prefix: Path) -> object:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(prefix)
    options.intra_op_num_threads = 1
    # No graph rewrites, so the trace's node names are the ONNX file's.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def test_onnxruntime_profile_counts_only_the_profiled_runs(onnx_path: Path, tmp_path: Path) -> None:
    session = _onnxruntime_session(onnx_path, tmp_path / "ort")
    for _ in range(3):  # 1 warm-up + 2 profiled
        session.run(None, {"x": _image()})  # type: ignore[attr-defined]
    profile = OnnxRuntimeRunProfiler(session).stop(runs=2)
    records = profile.records
    convs = [r for r in records if r.type == "Conv"]
    assert sorted(r.name for r in convs) == sorted(_conv_nodes(onnx_path))
    assert all(r.count == 1 and r.impl == "CPU" and r.precision == "f32" for r in convs), convs
    assert {r.type for r in records} == {"Conv", "Relu"}
    assert (profile.backend, profile.runs, profile.nodes) == ("onnxruntime", 2, 5)
    assert profile.nodes == 5 and sum(profile.share(r) for r in records) == pytest.approx(1.0)
    assert not list(tmp_path.glob("ort*.json"))  # the trace is read and removed


def test_onnxruntime_profile_needs_enough_runs(onnx_path: Path, tmp_path: Path) -> None:
    session = _onnxruntime_session(onnx_path, tmp_path / "ort")
    session.run(None, {"x": _image()})  # type: ignore[attr-defined]
    trace = session.end_profiling()  # type: ignore[attr-defined]
    assert len(onnxruntime_records(trace, 1)) == 5
    with pytest.raises(ValueError, match="holds 1 runs, 2 were asked for"):
        onnxruntime_records(trace, 2)


def test_torch_profile_lists_the_convolutions() -> None:
    net, x = _net(), torch.rand(1, 3, SIZE, SIZE)
    with torch.inference_mode():
        net(x)  # warm-up
        profiler = TorchRunProfiler("cpu")
        profiler.start(warmup=1)
        for _ in range(2):
            net(x)
        records = profiler.stop(runs=2).records
    convs = [r for r in records if r.type == "aten::conv2d"]
    assert sum(r.count for r in convs) == 3 and all(r.precision == "f32" for r in convs)
    assert any("[1, 3, 64, 64]" in r.name for r in convs)
    assert all("conv" in r.impl for r in convs), convs  # the callee doing the work, e.g. mkldnn_convolution
    assert sum(r.count for r in records if r.type == "aten::relu") == 2


def _records() -> list[OpRecord]:
    return [
        OpRecord("a", "Convolution", "brgconv_avx512_amx_1x1_bf16", "bf16", 3.0, 1.0),
        OpRecord("b", "Convolution", "jit_avx512_amx_bf16", "bf16", 1.0, 1.0),
        OpRecord("c", "Reorder", "ref_any_f32", "f32", 6.0, 1.0),
    ]


def test_summaries_by_type_and_kernel() -> None:
    by_type = summarize_by_type(_records())
    assert [(s.type, s.count, s.time_ms, s.share) for s in by_type] == [
        ("Reorder", 1.0, 6.0, 0.6),
        ("Convolution", 2.0, 4.0, 0.4),
    ]
    by_kernel = summarize_by_type(_records(), by_impl=True)
    assert [(s.type, s.impl, s.share) for s in by_kernel][1] == ("Convolution", "brgconv_avx512_amx_1x1_bf16", 0.3)


def test_table_lists_the_top_rows_and_the_types() -> None:
    profile = Profile("openvino", 5, _records())
    assert [r.name for r in profile.records] == ["c", "a", "b"]
    table = format_table(profile, top=2)
    assert "3 executed nodes, 10.00 ms profiled per inference (mean of 5 runs)" in table
    assert "| 1 | c | Reorder | ref_any_f32 | f32 | 6.000 | 60.0% | 1 |" in table
    assert "| b |" not in table  # third by time: not in the top 2
    assert "| Convolution | 2 | 4.000 | 40.0% |" in table


def test_json_round_trip(tmp_path: Path) -> None:
    profile = Profile("openvino", 5, _records(), settings={"threads": 1}, not_run=4)
    path = write_profile_json(profile, tmp_path / "p.json")
    assert read_profile_json(path) == profile
    data = json.loads(path.read_text())
    assert (data["nodes"], data["not_run"], data["total_ms"], data["by_type"][0]["type"]) == (3.0, 4, 10.0, "Reorder")
    assert [(r["name"], r["share"]) for r in data["records"]] == [("c", 0.6), ("a", 0.3), ("b", 0.1)]
    markdown, table = write_profile(profile, tmp_path / "sub" / "r18")
    assert (markdown.name, table.name) == ("r18.md", "r18.json")
    assert markdown.read_text() == format_table(profile) and read_profile_json(table) == profile


def test_reading_a_file_that_is_not_a_profile_names_it(tmp_path: Path) -> None:
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"records": [{"name": "a"}]}))
    with pytest.raises(ValueError, match="other.json: not a profile"):
        read_profile_json(path)


def test_openvino_int8_model_runs_i8_kernels(onnx_path: Path) -> None:
    """An NNCF-quantized model's convolutions run in int8 kernels (``brgconv_avx512_amx_I8`` with AMX,
    VNNI ones without), and the profile says so."""
    nncf = pytest.importorskip("nncf")
    import openvino as ov

    core = ov.Core()
    if "INT8" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        pytest.skip("this CPU has no int8 in OpenVINO")
    calibration = nncf.Dataset(
        [np.random.default_rng(i).random((1, 3, SIZE, SIZE), dtype=np.float32) for i in range(4)]
    )
    model = nncf.quantize(core.read_model(str(onnx_path)), calibration, subset_size=4)
    compiled = core.compile_model(model, "CPU", {ov.properties.enable_profiling: True, "INFERENCE_NUM_THREADS": 1})
    request = compiled.create_infer_request()
    request.infer({"x": _image()})
    convs = [r for r in openvino_records(request.get_profiling_info(), 1) if r.type == "Convolution"]
    assert len(convs) == 3 and {r.precision for r in convs} == {"i8"}, convs
