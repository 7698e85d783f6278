from __future__ import annotations

import json

import pytest
import torch

from rtdetr_spartan.deploy.benchmark import count_flops
from rtdetr_spartan.deploy.export import DeployModel
from rtdetr_spartan.deploy.from_config import load_config
from tests.deploy.deploy_utils import R18_CONFIG
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
    assert eager["gflops"] == ort["gflops"] > 0 and eager["gmacs"] == pytest.approx(eager["gflops"] / 2, abs=1e-3)
    assert (eager["backend"], ort["backend"], ort["batch"], ort["threads"]) == ("torch", "onnxruntime", 2, 2)
    for result in (eager, ort):
        assert result["latency_ms"] > 0
        assert result["throughput"] == pytest.approx(result["batch"] * 1000 / result["latency_ms"], rel=1e-3)


def test_flops_include_the_encoder_attention() -> None:
    """One AIFI layer adds its projections, attention products and FFN (FLOPs = 2 x MACs); the
    attention products are missed by the counter unless the math SDPA kernel runs."""
    flops = {}
    for layers in (0, 1):
        cfg = load_config(R18_CONFIG, [f"HybridEncoder.num_encoder_layers={layers}"])
        flops[layers] = count_flops(DeployModel(cfg.build("model"), cfg.build("postprocessor")), SIZE)
    tokens, dim, ffn = (SIZE // 32) ** 2, 256, 1024
    macs = 4 * tokens * dim * dim + 2 * tokens * tokens * dim + 2 * tokens * dim * ffn
    assert flops[1] - flops[0] == pytest.approx(2 * macs, rel=1e-6)


def test_cpu_bfloat16_autocast_runs(capsys: pytest.CaptureFixture[str]) -> None:
    result = _run(capsys, "--amp", "bfloat16")
    assert (result["device"], result["amp_dtype"], result["gpu"]) == ("cpu", "bfloat16", None)
    assert result["latency_ms"] > 0


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
