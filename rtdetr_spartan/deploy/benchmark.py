"""Size, compute and speed of a config's detector: parameters, GFLOPs, latency, throughput.
Backends: eager PyTorch (CPU or CUDA), onnxruntime and OpenVINO (CPU) on the exported graph.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode``, which counts a multiply-add as 2
FLOPs (FLOPs = 2 x MACs) and only counts matrix products and convolutions (not elementwise ops,
grid sampling or top-k, which are a small share here). They are reported per image.
Latency covers the whole deploy graph (model + postprocessor) on one batch: median of ``runs``
timed calls after ``warmup`` untimed ones. PyTorch can also run on a CUDA GPU (each call ends with
a device synchronize, so the wall time covers the GPU work), optionally under float16 or bfloat16
autocast.

With ``profile=True`` the timed calls also run under the backend's own profiler
(:mod:`rtdetr_spartan.deploy.profiling`): ``result.profile`` holds the per-node records, and the
latency then includes the profiler's overhead. ``onnx=PATH`` measures a saved ``.onnx`` file or
OpenVINO IR (``model.xml``, e.g. an INT8 model) instead of exporting the config's model.
"""

from __future__ import annotations

import logging
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from rtdetr_spartan.deploy.export import DeployModel, export_onnx, sample_inputs
from rtdetr_spartan.deploy.from_config import load_config, model_info_from_config
from rtdetr_spartan.deploy.metadata import ModelInfo
from rtdetr_spartan.deploy.profiling import (
    OnnxRuntimeRunProfiler,
    OpenVinoRunProfiler,
    Profile,
    TorchRunProfiler,
)
from rtdetr_spartan.deploy.runtime import session_options
from rtdetr_spartan.misc.checkpoint import load_model_weights
from rtdetr_spartan.nn.compile import compile_regional

__all__ = ["BACKENDS", "BenchmarkResult", "benchmark", "count_flops", "cpu_name", "time_calls"]

logger = logging.getLogger(__name__)

BACKENDS: tuple[str, ...] = ("torch", "onnxruntime", "openvino")


@dataclass
class BenchmarkResult:
    """One benchmark run; ``gflops`` per image (2 x GMACs), latencies in milliseconds per batch.

    ``params`` / ``gflops`` / ``gmacs`` are None for a saved model measured without a config.
    ``profile``: the per-node profile of the timed calls (``profile=True``); ``to_dict`` gives
    only its totals (``profile_nodes``, ``profile_total_ms``).
    """

    config: str
    backend: str
    size: int
    batch: int
    threads: int
    device: str
    amp_dtype: str | None
    compiled: bool
    cuda_graph: bool
    params: int | None
    gflops: float | None
    gmacs: float | None
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
    model_file: str | None = None
    profile_nodes: float | None = None
    profile_total_ms: float | None = None
    profile: Profile | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "profile"}


class RunProfiler(Protocol):
    """A backend's profiler around the timed calls (see :mod:`rtdetr_spartan.deploy.profiling`)."""

    def start(self, warmup: int) -> None:
        """Called after the ``warmup`` untimed calls, before the timed ones."""

    def stop(self, runs: int) -> Profile:
        """Ends profiling; the per-inference profile of the ``runs`` timed calls."""
        ...


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


def time_calls(call: Callable[[], object], runs: int, warmup: int, profiler: RunProfiler | None = None) -> list[float]:
    """Wall-clock milliseconds of ``runs`` calls after ``warmup`` untimed calls; ``profiler``
    records the timed calls."""
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    for _ in range(warmup):
        call()
    times = []
    if profiler is not None:
        profiler.start(warmup)
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


@dataclass
class _Backend:
    """A model ready to time: one inference ``call``, the model's metadata, and its profiler
    when profiling."""

    call: Callable[[], object]
    info: ModelInfo
    profiler: RunProfiler | None


def _check_batch(path: Path, fixed_batch: int | None, batch: int) -> None:
    if fixed_batch is not None and fixed_batch != batch:
        raise ValueError(f"{path} was exported for batch {fixed_batch}, not {batch}: use --batch {fixed_batch}")


def _onnxruntime_backend(
    path: Path, batch: int, threads: int, optimization: str, work_dir: Path, profile: bool
) -> _Backend:
    """An onnxruntime CPU session on ``path``, profiling to ``work_dir`` when ``profile``."""
    import onnxruntime as ort

    options = session_options(threads, optimization, str(work_dir / "onnxruntime") if profile else None)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    inputs = {i.name: i for i in session.get_inputs()}
    if not {"images", "orig_target_sizes"} <= set(inputs):
        raise ValueError(f"{path}: inputs images and orig_target_sizes expected, got {sorted(inputs)}")
    info = ModelInfo.from_metadata(session.get_modelmeta().custom_metadata_map, str(path))
    fixed_batch = inputs["images"].shape[0]
    _check_batch(path, fixed_batch if isinstance(fixed_batch, int) else None, batch)
    images, sizes = sample_inputs(info.input_size, batch)
    size_dtype = np.float32 if inputs["orig_target_sizes"].type == "tensor(float)" else np.int64
    feed = {"images": images.numpy(), "orig_target_sizes": sizes.numpy().astype(size_dtype)}
    return _Backend(lambda: session.run(None, feed), info, OnnxRuntimeRunProfiler(session) if profile else None)


def _openvino_backend(path: Path, batch: int, threads: int, precision: str, profile: bool) -> _Backend:
    """``path`` (``.onnx`` or IR ``.xml``) compiled by OpenVINO for the CPU in ``precision``."""
    from rtdetr_spartan.deploy.openvino_runtime import OpenVinoPredictor

    predictor = OpenVinoPredictor(path, threads=threads, precision=precision, profiling=profile)
    fixed_batch = predictor.compiled.input("images").get_partial_shape()[0]
    _check_batch(path, fixed_batch.get_length() if fixed_batch.is_static else None, batch)
    images, sizes = sample_inputs(predictor.info.input_size, batch)
    batch_images, orig_sizes = images.numpy(), sizes.numpy()
    return _Backend(
        lambda: predictor.run(batch_images, orig_sizes),
        predictor.info,
        OpenVinoRunProfiler(predictor) if profile else None,
    )


@dataclass
class _ConfigModel:
    """The config's detector in deploy form, with its size and compute."""

    module: DeployModel
    info: ModelInfo
    params: int
    flops: float


def _config_model(
    config: str | Path, overrides: Sequence[str], checkpoint: str | Path | None, size: int, batch: int
) -> _ConfigModel:
    cfg = load_config(config, overrides)
    model = cfg.build("model")
    if checkpoint is not None:
        load_model_weights(model, checkpoint, strict=True, expect_task="detection", purpose="a detector (-r)")
    params = sum(p.numel() for p in model.parameters())
    module = DeployModel(model, cfg.build("postprocessor")).eval()
    # Fixed shapes, except the batch axis when the batch is not the traced one (1).
    info = model_info_from_config(cfg, (size, size), dynamic_batch=batch > 1, dynamic_size=False)
    return _ConfigModel(module, info, params, count_flops(module, size))


def _versions(backend: str) -> tuple[str | None, str | None]:
    """(onnxruntime, OpenVINO) versions of the backend that ran, None for the other."""
    if backend == "onnxruntime":
        import onnxruntime

        return onnxruntime.__version__, None
    if backend == "openvino":
        import openvino

        return None, openvino.__version__
    return None, None


def _prepare(
    backend: str,
    model: _ConfigModel | None,
    onnx: Path | None,
    work_dir: Path,
    *,
    size: int,
    batch: int,
    threads: int,
    optimization: str,
    openvino_precision: str,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    compile_model: bool,
    cuda_graph: bool,
    profile: bool,
) -> _Backend:
    """The backend's call on random inputs: the eager module, or ``onnx`` (else the config's model
    exported into ``work_dir``) in onnxruntime or OpenVINO."""
    if backend == "torch":
        assert model is not None  # benchmark() refuses the torch backend without a config
        images, sizes = sample_inputs((size, size), batch)
        call = _torch_call(model.module, images.to(device), sizes, amp_dtype, compile_model, cuda_graph)
        return _Backend(call, model.info, TorchRunProfiler(device.type) if profile else None)
    if onnx is None:
        assert model is not None  # benchmark() needs a config or a saved model
        onnx = export_onnx(model.module, work_dir / "model.onnx", model.info, check=False, verify=False).path
    if backend == "openvino":
        return _openvino_backend(onnx, batch, threads, openvino_precision, profile)
    return _onnxruntime_backend(onnx, batch, threads, optimization, work_dir, profile)


def benchmark(
    config: str | Path | None,
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
    onnx: str | Path | None = None,
    profile: bool = False,
) -> BenchmarkResult:
    """Build the config's detector and measure it on ``batch`` random ``size`` x ``size`` images.

    ``threads``: PyTorch intra-op threads (``torch.set_num_threads``, restored afterwards) or the
    onnxruntime / OpenVINO threads; default: the number of cores. ``device``: ``cpu`` or ``cuda``
    (torch backend); ``amp``: ``float16`` / ``bfloat16`` autocast for the torch backend, else
    float32; ``compile_model`` / ``cuda_graph``: see ``_torch_call`` (torch backend);
    ``openvino_precision``: ``float32`` or ``bfloat16`` inference precision (openvino backend).
    ``onnx``: measure this saved ``.onnx`` / OpenVINO ``.xml`` (onnxruntime or openvino backend) at
    the input size in its metadata; ``config`` is then optional (params and GFLOPs need it).
    ``profile``: record the timed calls with the backend's profiler (``result.profile``).
    """
    torch_device, amp_dtype = _resolve_device(device, backend, amp, compile_model, cuda_graph)
    if config is None and onnx is None:
        raise ValueError("give a config, or a saved model to measure (onnx=PATH / --onnx PATH)")
    if onnx is not None and backend == "torch":
        raise ValueError("a saved model (--onnx) runs with --backend onnxruntime or openvino, not torch")
    if onnx is not None and not Path(onnx).is_file():
        raise FileNotFoundError(f"model {onnx} does not exist (an .onnx export or an OpenVINO .xml)")
    previous_threads = torch.get_num_threads()
    threads = threads or previous_threads
    torch.set_num_threads(threads)  # process-wide: restored below
    try:
        # A saved model's size is in its metadata: its config is counted at that size, below.
        model = (
            None if config is None or onnx is not None else _config_model(config, overrides, checkpoint, size, batch)
        )
        with tempfile.TemporaryDirectory() as tmp:
            runner = _prepare(
                backend,
                model,
                Path(onnx) if onnx is not None else None,
                Path(tmp),
                size=size,
                batch=batch,
                threads=threads,
                optimization=optimization,
                openvino_precision=openvino_precision,
                device=torch_device,
                amp_dtype=amp_dtype,
                compile_model=compile_model,
                cuda_graph=cuda_graph,
                profile=profile,
            )
            if config is not None and model is None:
                model = _config_model(config, overrides, checkpoint, runner.info.input_size[0], batch)
            times = time_calls(runner.call, runs, warmup, runner.profiler)
            profiled = runner.profiler.stop(runs) if runner.profiler is not None else None
    finally:
        torch.set_num_threads(previous_threads)
    median = statistics.median(times)
    ort_version, ov_version = _versions(backend)
    result = BenchmarkResult(
        config=Path(config).name if config is not None else Path(str(onnx)).name,
        backend=backend,
        size=runner.info.input_size[0],
        batch=batch,
        threads=threads,
        device=torch_device.type,
        amp_dtype=amp,
        compiled=compile_model,
        cuda_graph=cuda_graph,
        params=model.params if model is not None else None,
        gflops=round(model.flops / 1e9, 3) if model is not None else None,
        gmacs=round(model.flops / 2e9, 3) if model is not None else None,
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
        model_file=str(onnx) if onnx is not None else None,
    )
    if profiled is not None:
        profiled.settings = result.to_dict()
        result.profile = profiled
        result.profile_nodes = result.profile.nodes
        result.profile_total_ms = round(result.profile.total_ms, 3)
    return result
