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
(:mod:`rtdetr_spartan.benchmark.profiling`): ``result.profile`` holds the per-node records, and the
latency then includes the profiler's overhead. ``onnx=PATH`` measures a saved ``.onnx`` file or
OpenVINO IR (``model.xml``, e.g. an INT8 model) instead of exporting the config's model.

The exported graph runs in the predictors of :mod:`rtdetr_spartan.deploy` (the same sessions,
input checks and batching as inference). PyTorch's intra-op thread count is process-wide: a run
sets it to ``threads`` and restores the caller's count afterwards, also when it fails.
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

from rtdetr_spartan.benchmark.flops import count_flops
from rtdetr_spartan.benchmark.profiling import Profile
from rtdetr_spartan.benchmark.run_profilers import OnnxRuntimeRunProfiler, OpenVinoRunProfiler, TorchRunProfiler
from rtdetr_spartan.benchmark.torch_backend import BACKENDS, resolve_device, torch_call
from rtdetr_spartan.core import YAMLConfig
from rtdetr_spartan.deploy.export import DeployModel, export_onnx, sample_inputs
from rtdetr_spartan.deploy.from_config import load_config, model_info_from_config
from rtdetr_spartan.deploy.metadata import ModelInfo
from rtdetr_spartan.deploy.openvino_runtime import OpenVinoPredictor
from rtdetr_spartan.deploy.predictor import Predictor
from rtdetr_spartan.deploy.runtime import OnnxPredictor
from rtdetr_spartan.misc.checkpoint import load_model_weights

__all__ = ["BACKENDS", "BenchmarkResult", "Clock", "benchmark", "cpu_name", "time_calls"]

logger = logging.getLogger(__name__)

Clock = Callable[[], float]  # seconds, monotonic: time.perf_counter


@dataclass
class BenchmarkResult:
    """One benchmark run; ``gflops`` per image (2 x GMACs), latencies in milliseconds per batch.

    ``params`` / ``gflops`` / ``gmacs`` are None for a saved model measured without a config;
    ``gflops`` / ``gmacs`` also when FLOPs were not counted (``benchmark(..., flops=False)``).
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
    """A backend's profiler around the timed calls (see :mod:`rtdetr_spartan.benchmark.profiling`)."""

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


def time_calls(
    call: Callable[[], object],
    runs: int,
    warmup: int,
    profiler: RunProfiler | None = None,
    clock: Clock = time.perf_counter,
) -> list[float]:
    """Milliseconds of ``runs`` calls after ``warmup`` untimed calls, read on ``clock`` (seconds;
    wall clock by default) before and after each; ``profiler`` records the timed calls."""
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    for _ in range(warmup):
        call()
    times = []
    if profiler is not None:
        profiler.start(warmup)
    for _ in range(runs):
        start = clock()
        call()
        times.append((clock() - start) * 1000.0)
    return times


@dataclass
class _Backend:
    """A model ready to time: one inference ``call``, the model's metadata, and its profiler
    when profiling."""

    call: Callable[[], object]
    info: ModelInfo
    profiler: RunProfiler | None


def _check_batch(predictor: Predictor, batch: int) -> None:
    if predictor.fixed_batch is not None and predictor.fixed_batch != batch:
        raise ValueError(
            f"{predictor.source} was exported for batch {predictor.fixed_batch}, not {batch}: "
            f"use --batch {predictor.fixed_batch}"
        )


def _predictor_backend(predictor: Predictor, batch: int, profiler: RunProfiler | None) -> _Backend:
    """The predictor's ``run`` on ``batch`` random images at its input size."""
    _check_batch(predictor, batch)
    images, sizes = sample_inputs(predictor.info.input_size, batch)
    batch_images, orig_sizes = images.numpy(), sizes.numpy()
    return _Backend(lambda: predictor.run(batch_images, orig_sizes), predictor.info, profiler)


def _onnxruntime_backend(
    path: Path, batch: int, threads: int, optimization: str, work_dir: Path, profile: bool
) -> _Backend:
    """``path`` in an onnxruntime CPU session, profiling to ``work_dir`` when ``profile``."""
    prefix = str(work_dir / "onnxruntime") if profile else None
    predictor = OnnxPredictor(path, threads=threads, optimization=optimization, profile_prefix=prefix)
    return _predictor_backend(predictor, batch, OnnxRuntimeRunProfiler(predictor.session) if profile else None)


def _openvino_backend(path: Path, batch: int, threads: int, precision: str, profile: bool) -> _Backend:
    """``path`` (``.onnx`` or IR ``.xml``) compiled by OpenVINO for the CPU in ``precision``."""
    predictor = OpenVinoPredictor(path, threads=threads, precision=precision, profiling=profile)
    return _predictor_backend(predictor, batch, OpenVinoRunProfiler(predictor) if profile else None)


@dataclass
class _ConfigModel:
    """The config's detector in deploy form, with its size and compute."""

    module: DeployModel
    info: ModelInfo
    params: int
    flops: float | None


def _config_model(
    config: str | Path | YAMLConfig,
    overrides: Sequence[str],
    checkpoint: str | Path | None,
    size: int,
    batch: int,
    flops: bool,
) -> _ConfigModel:
    cfg = load_config(config, overrides)
    model = cfg.build("model")
    if checkpoint is not None:
        load_model_weights(model, checkpoint, strict=True, expect_task="detection", purpose="a detector (-r)")
    params = sum(p.numel() for p in model.parameters())
    module = DeployModel(model, cfg.build("postprocessor")).eval()
    # Fixed shapes, except the batch axis when the batch is not the traced one (1).
    info = model_info_from_config(cfg, (size, size), dynamic_batch=batch > 1, dynamic_size=False)
    return _ConfigModel(module, info, params, count_flops(module, size) if flops else None)


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
        call = torch_call(model.module, images.to(device), sizes, amp_dtype, compile_model, cuda_graph)
        return _Backend(call, model.info, TorchRunProfiler(device.type) if profile else None)
    if onnx is None:
        assert model is not None  # benchmark() needs a config or a saved model
        onnx = export_onnx(model.module, work_dir / "model.onnx", model.info, check=False, verify=False).path
    if backend == "openvino":
        return _openvino_backend(onnx, batch, threads, openvino_precision, profile)
    return _onnxruntime_backend(onnx, batch, threads, optimization, work_dir, profile)


def _config_name(config: str | Path | YAMLConfig) -> str:
    """The config's file name, for the result table."""
    return (config.path if isinstance(config, YAMLConfig) else Path(config)).name


def benchmark(
    config: str | Path | YAMLConfig | None,
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
    flops: bool = True,
    clock: Clock = time.perf_counter,
) -> BenchmarkResult:
    """Build the config's detector and measure it on ``batch`` random ``size`` x ``size`` images.

    ``threads``: PyTorch intra-op threads (``torch.set_num_threads``, restored afterwards) or the
    onnxruntime / OpenVINO threads; default: the number of cores. ``device``: ``cpu`` or ``cuda``
    (torch backend); ``amp``: ``float16`` / ``bfloat16`` autocast for the torch backend, else
    float32; ``compile_model`` / ``cuda_graph``: see :func:`rtdetr_spartan.benchmark.torch_backend.torch_call` (torch backend);
    ``openvino_precision``: ``float32`` or ``bfloat16`` inference precision (openvino backend).
    ``onnx``: measure this saved ``.onnx`` / OpenVINO ``.xml`` (onnxruntime or openvino backend) at
    the input size in its metadata; ``config`` is then optional (params and GFLOPs need it).
    ``profile``: record the timed calls with the backend's profiler (``result.profile``).
    ``flops``: count the config's FLOPs (one extra forward pass under the counter; they depend
    only on config and size, so a caller measuring one model on several backends counts once).
    ``clock``: the timer of the calls (seconds), ``time.perf_counter`` by default.
    """
    torch_device, amp_dtype = resolve_device(device, backend, amp, compile_model, cuda_graph)
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
            None
            if config is None or onnx is not None
            else _config_model(config, overrides, checkpoint, size, batch, flops)
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
                model = _config_model(config, overrides, checkpoint, runner.info.input_size[0], batch, flops)
            times = time_calls(runner.call, runs, warmup, runner.profiler, clock)
            profiled = runner.profiler.stop(runs) if runner.profiler is not None else None
    finally:
        torch.set_num_threads(previous_threads)
    median = statistics.median(times)
    ort_version, ov_version = _versions(backend)
    result = BenchmarkResult(
        config=_config_name(config) if config is not None else Path(str(onnx)).name,
        backend=backend,
        size=runner.info.input_size[0],
        batch=batch,
        threads=threads,
        device=torch_device.type,
        amp_dtype=amp,
        compiled=compile_model,
        cuda_graph=cuda_graph,
        params=model.params if model is not None else None,
        gflops=round(model.flops / 1e9, 3) if model is not None and model.flops is not None else None,
        gmacs=round(model.flops / 2e9, 3) if model is not None and model.flops is not None else None,
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
