from __future__ import annotations

import json

import openvino
import pytest

from rtdetr_spartan.deploy.openvino_runtime import openvino_bf16_supported
from tests.deploy.deploy_utils import R18_CONFIG
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
