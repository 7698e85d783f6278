"""Size, compute and speed of a config's detector: parameters, GFLOPs, latency, throughput.
Backends: eager PyTorch (CPU or CUDA), onnxruntime and OpenVINO (CPU) on the exported graph.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode``, which counts a multiply-add as 2
FLOPs (FLOPs = 2 x MACs) and only counts matrix products and convolutions (not elementwise ops,
grid sampling or top-k, which are a small share here). They are reported per image.
Latency covers the whole deploy graph (model + postprocessor) on one batch: median of ``runs``
timed calls after ``warmup`` untimed ones. PyTorch can also run on a CUDA GPU (each call ends with
a device synchronize, so the wall time covers the GPU work), optionally under float16 or bfloat16
autocast.
"""

from __future__ import annotations

import logging
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from rtdetr_spartan.deploy.export import DeployModel, export_onnx, sample_inputs
from rtdetr_spartan.deploy.from_config import load_config, model_info_from_config
from rtdetr_spartan.deploy.metadata import ModelInfo
from rtdetr_spartan.deploy.runtime import session_options
from rtdetr_spartan.misc.checkpoint import load_model_weights
from rtdetr_spartan.nn.compile import compile_regional

__all__ = ["BACKENDS", "BenchmarkResult", "benchmark", "count_flops", "cpu_name", "time_calls"]

logger = logging.getLogger(__name__)

BACKENDS: tuple[str, ...] = ("torch", "onnxruntime", "openvino")


@dataclass
class BenchmarkResult:
    """One benchmark run; ``gflops`` per image (2 x GMACs), latencies in milliseconds per batch."""

    config: str
    backend: str
    size: int
    batch: int
    threads: int
    device: str
    amp_dtype: str | None
    compiled: bool
    cuda_graph: bool
    params: int
    gflops: float
    gmacs: float
    latency_ms: float
    latency_mean_ms: float
    latency_min_ms: float
    throughput: float
    runs: int
    warmup: int
    cpu: str
    gpu: str | None
    torch_version: str
    onnxruntime_version: str | None
    openvino_version: str | None = None
    openvino_precision: str | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def cpu_name() -> str:
    """The processor's marketing name (``/proc/cpuinfo`` on Linux), else ``platform`` info."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def count_flops(module: DeployModel, size: int) -> float:
    """FLOPs (2 x MACs) of one ``size`` x ``size`` image through ``module``.

    Attention runs with PyTorch's math SDPA kernel here: the counter has no formula for the
    fused CPU attention kernels, so it would silently drop the attention products (Q K^T, A V).
    """
    images, sizes = sample_inputs((size, size), 1)
    counter = FlopCounterMode(display=False)
    with counter, sdpa_kernel(SDPBackend.MATH), torch.no_grad():
        module(images, sizes)
    return float(counter.get_total_flops())


def time_calls(call: Callable[[], object], runs: int, warmup: int) -> list[float]:
    """Wall-clock milliseconds of ``runs`` calls after ``warmup`` untimed calls."""
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def _torch_call(
    module: DeployModel,
    images: torch.Tensor,
    sizes: torch.Tensor,
    amp_dtype: torch.dtype | None,
    compile_model: bool = False,
    cuda_graph: bool = False,
) -> Callable[[], object]:
    """One inference call on ``images.device``; a CUDA call waits for the GPU before returning.

    ``compile_model``: compile the module's repeated blocks first (regional compilation,
    ``rtdetr_spartan.nn.compile.compile_regional``; the warm-up calls compile them).
    ``cuda_graph``: capture one call in a CUDA graph and time its replays, which removes the
    per-op launch cost of eager PyTorch (what a deployment with fixed input shapes would do).
    """
    device = images.device
    module = module.to(device)
    sizes = sizes.to(device)
    forward = compile_regional(module, dynamic=False) if compile_model else module

    def run() -> object:
        with (
            torch.inference_mode(),
            torch.autocast(device.type, amp_dtype or torch.float32, enabled=amp_dtype is not None),
        ):
            return forward(images, sizes)

    def call() -> object:
        outputs = run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return outputs

    if not cuda_graph:
        return call
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(3):  # warm-up (cuDNN / cuBLAS choices, caches) off the graph
            run()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = run()

    def replay() -> object:
        graph.replay()
        torch.cuda.synchronize(device)
        return outputs

    return replay


def _resolve_device(
    device: str, backend: str, amp: str | None, compile_model: bool, cuda_graph: bool
) -> tuple[torch.device, torch.dtype | None]:
    """The torch device and autocast dtype, with a clear error for combinations that cannot run."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    resolved = torch.device(device)
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, got {device!r}")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda requested but torch.cuda.is_available() is False")
    if backend != "torch" and (resolved.type != "cpu" or amp is not None):
        raise ValueError(f"the {backend} backend runs on the CPU: use --device cpu without --amp")
    if backend != "torch" and (compile_model or cuda_graph):
        raise ValueError("compile_model and cuda_graph are options of the torch backend")
    if cuda_graph and resolved.type != "cuda":
        raise ValueError("cuda_graph needs device cuda")
    if amp is None:
        return resolved, None
    if amp not in ("float16", "bfloat16"):
        raise ValueError(f"amp must be float16 or bfloat16, got {amp!r}")
    if resolved.type == "cpu" and amp == "float16":
        raise ValueError("float16 autocast is for CUDA; use bfloat16 on the CPU")
    return resolved, getattr(torch, amp)


def _onnxruntime_call(
    module: DeployModel,
    info: ModelInfo,
    images: torch.Tensor,
    sizes: torch.Tensor,
    threads: int,
    optimization: str,
    work_dir: Path,
) -> Callable[[], object]:
    """Export ``module`` as ``info`` says and return a call of an onnxruntime session on it."""
    import onnxruntime as ort

    path = export_onnx(module, work_dir / "model.onnx", info, check=False, verify=False).path
    session = ort.InferenceSession(
        str(path), session_options(threads, optimization), providers=["CPUExecutionProvider"]
    )
    feed = {"images": images.numpy(), "orig_target_sizes": sizes.numpy()}
    return lambda: session.run(None, feed)


def _openvino_call(
    module: DeployModel,
    info: ModelInfo,
    images: torch.Tensor,
    sizes: torch.Tensor,
    threads: int,
    precision: str,
    work_dir: Path,
) -> Callable[[], object]:
    """Export ``module`` as ``info`` says and return a call of it compiled by OpenVINO for the CPU."""
    from rtdetr_spartan.deploy.openvino_runtime import OpenVinoPredictor

    path = export_onnx(module, work_dir / "model.onnx", info, check=False, verify=False).path
    predictor = OpenVinoPredictor(path, threads=threads, precision=precision)
    batch, orig_sizes = images.numpy(), sizes.numpy()
    return lambda: predictor.run(batch, orig_sizes)


def benchmark(
    config: str | Path,
    size: int = 640,
    batch: int = 1,
    backend: str = "torch",
    threads: int | None = None,
    runs: int = 20,
    warmup: int = 5,
    overrides: Sequence[str] = (),
    checkpoint: str | Path | None = None,
    optimization: str = "all",
    device: str = "cpu",
    amp: str | None = None,
    compile_model: bool = False,
    cuda_graph: bool = False,
    openvino_precision: str = "float32",
) -> BenchmarkResult:
    """Build the config's detector and measure it on ``batch`` random ``size`` x ``size`` images.

    ``threads``: PyTorch intra-op threads (``torch.set_num_threads``, process-wide) or the
    onnxruntime session's; default: the number of cores. ``device``: ``cpu`` or ``cuda`` (torch
    backend); ``amp``: ``float16`` / ``bfloat16`` autocast for the torch backend, else float32;
    ``compile_model`` / ``cuda_graph``: see ``_torch_call`` (torch backend);
    ``openvino_precision``: ``float32`` or ``bfloat16`` inference precision (openvino backend).
    """
    torch_device, amp_dtype = _resolve_device(device, backend, amp, compile_model, cuda_graph)
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    cfg = load_config(config, overrides)
    model = cfg.build("model")
    if checkpoint is not None:
        load_model_weights(model, checkpoint, strict=True)
    params = sum(p.numel() for p in model.parameters())
    module = DeployModel(model, cfg.build("postprocessor")).eval()
    flops = count_flops(module, size)
    images, sizes = sample_inputs((size, size), batch)
    # Fixed shapes, except the batch axis when the batch is not the traced one (1).
    info = model_info_from_config(cfg, (size, size), dynamic_batch=batch > 1, dynamic_size=False)
    with tempfile.TemporaryDirectory() as tmp:
        if backend == "torch":
            call = _torch_call(module, images.to(torch_device), sizes, amp_dtype, compile_model, cuda_graph)
        elif backend == "openvino":
            call = _openvino_call(module, info, images, sizes, threads, openvino_precision, Path(tmp))
        else:
            call = _onnxruntime_call(module, info, images, sizes, threads, optimization, Path(tmp))
        times = time_calls(call, runs, warmup)
    median = statistics.median(times)
    ort_version = None
    if backend == "onnxruntime":
        import onnxruntime

        ort_version = onnxruntime.__version__
    ov_version = None
    if backend == "openvino":
        import openvino

        ov_version = openvino.__version__
    return BenchmarkResult(
        config=Path(config).name,
        backend=backend,
        size=size,
        batch=batch,
        threads=threads,
        device=torch_device.type,
        amp_dtype=amp,
        compiled=compile_model,
        cuda_graph=cuda_graph,
        params=params,
        gflops=round(flops / 1e9, 3),
        gmacs=round(flops / 2e9, 3),
        latency_ms=round(median, 3),
        latency_mean_ms=round(float(np.mean(times)), 3),
        latency_min_ms=round(min(times), 3),
        throughput=round(batch * 1000.0 / median, 3),
        runs=runs,
        warmup=warmup,
        cpu=cpu_name(),
        gpu=torch.cuda.get_device_name(torch_device) if torch_device.type == "cuda" else None,
        torch_version=torch.__version__,
        onnxruntime_version=ort_version,
        openvino_version=ov_version,
        openvino_precision=openvino_precision if backend == "openvino" else None,
    )
