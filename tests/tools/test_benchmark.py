from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rtdetr_spartan.benchmark.latency import benchmark
from rtdetr_spartan.benchmark.profiling import read_profile_json
from rtdetr_spartan.deploy.from_config import load_config
from rtdetr_spartan.misc.checkpoint import CheckpointError, save_atomic
from tests.deploy.deploy_utils import R18_CONFIG
from tests.train_utils import TINY_CONFIG
from tools.benchmark import main

SIZE = 128
KEYS = {"params", "gflops", "gmacs", "latency_ms", "throughput", "backend", "size", "batch", "threads", "cpu"}


def _run(capsys: pytest.CaptureFixture[str], *extra: str) -> dict:
    argv = ["-c", str(R18_CONFIG), "--size", str(SIZE), "--runs", "2", "--warmup", "1", "--threads", "2", *extra]
    assert main(argv) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    return json.loads(last)


@pytest.mark.slow
def test_torch_and_onnxruntime_report_the_same_model(capsys: pytest.CaptureFixture[str]) -> None:
    eager = _run(capsys, "--backend", "torch")
    ort = _run(capsys, "--backend", "onnxruntime", "--batch", "2")
    assert KEYS <= set(eager) and KEYS <= set(ort)
    expected_params = sum(p.numel() for p in load_config(R18_CONFIG).build("model").parameters())
    assert eager["params"] == ort["params"] == expected_params
    assert eager["gflops"] == ort["gflops"] and eager["gmacs"] == pytest.approx(eager["gflops"] / 2, abs=1e-3)
    assert (eager["backend"], ort["backend"], ort["batch"], ort["threads"]) == ("torch", "onnxruntime", 2, 2)
    for result in (eager, ort):  # latency values: tests/benchmark (a fake clock)
        assert result["throughput"] == pytest.approx(result["batch"] * 1000 / result["latency_ms"], rel=1e-3)


def test_cpu_bfloat16_autocast_runs(capsys: pytest.CaptureFixture[str]) -> None:
    result = _run(capsys, "--amp", "bfloat16")
    assert (result["device"], result["amp_dtype"], result["gpu"]) == ("cpu", "bfloat16", None)
    assert result["throughput"] == pytest.approx(1000 / result["latency_ms"], rel=1e-3)


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--amp", "float16"), "float16 autocast is for CUDA"),
        (("--backend", "onnxruntime", "--amp", "bfloat16"), "onnxruntime backend runs on the CPU"),
        (("--backend", "onnxruntime", "--compile"), "options of the torch backend"),
        (("--cuda-graph",), "cuda_graph needs device cuda"),
    ],
)
def test_impossible_settings_are_refused(
    extra: tuple[str, ...], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ValueError, match=message):
        _run(capsys, *extra)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without a GPU")
def test_cuda_without_a_gpu_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="cuda requested"):
        _run(capsys, "--device", "cuda")


@pytest.mark.slow
def test_torch_profile_lists_the_convolutions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = _run(capsys, "--profile", str(tmp_path / "r18"), "--profile-top", "5", "--runs", "1")
    profile = read_profile_json(tmp_path / "r18.json")
    convs = [r for r in profile.records if r.type == "aten::conv2d"]
    assert sum(r.count for r in convs) >= 20 and all(r.precision == "f32" for r in convs)  # ResNet-18 + encoder
    assert result["profile_nodes"] == pytest.approx(profile.nodes)
    assert result["profile_total_ms"] == pytest.approx(profile.total_ms, abs=1e-3)
    assert sum(profile.share(r) for r in profile.records) == pytest.approx(1.0)
    markdown = (tmp_path / "r18.md").read_text()
    assert markdown.count("\n| ") > 5 and "| aten::conv2d |" in markdown


def test_saved_models_need_a_runtime_backend(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="runs with --backend onnxruntime or openvino"):
        main(["--onnx", str(tmp_path / "model.onnx")])
    with pytest.raises(SystemExit):  # neither -c nor --onnx: a usage error
        main(["--backend", "openvino"])
    with pytest.raises(FileNotFoundError, match="missing.xml does not exist"):
        main(["--onnx", str(tmp_path / "missing.xml"), "--backend", "openvino"])


def test_a_saved_model_that_is_not_a_detector_export_is_named(tmp_path: Path) -> None:
    path = tmp_path / "conv.onnx"
    torch.onnx.export(torch.nn.Conv2d(3, 4, 1), (torch.rand(1, 3, 8, 8),), str(path), input_names=["x"], dynamo=False)
    with pytest.raises(ValueError, match=r"conv.onnx: metadata lacks .*was it exported by rtdetr_spartan\?"):
        main(["--onnx", str(path), "--backend", "onnxruntime", "--runs", "1", "--threads", "1"])


def test_a_classifier_checkpoint_is_refused_by_its_task(tmp_path: Path) -> None:
    """``-r`` takes a detector's checkpoint: a classifier's is named as such, before any tensor."""

    path = save_atomic({"model": {"linear.weight": torch.zeros(4, 8)}, "task": "classification"}, tmp_path / "c.pth")
    with pytest.raises(CheckpointError, match=rf"{path} is a classification checkpoint.*a detector \(-r\)"):
        benchmark(TINY_CONFIG, size=128, checkpoint=path, runs=1, warmup=0)
