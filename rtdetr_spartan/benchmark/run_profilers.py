"""Each backend's profiler around the benchmark's timed calls: ``start`` after the warm-up,
``stop`` returns the :class:`~rtdetr_spartan.benchmark.profiling.Profile` of the timed runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rtdetr_spartan.benchmark.profiling import Profile, onnxruntime_records, openvino_records, torch_records

__all__ = ["OnnxRuntimeRunProfiler", "OpenVinoRunProfiler", "TorchRunProfiler"]


class TorchRunProfiler:
    """``torch.profiler`` over the profiled calls of a PyTorch model (CPU, plus CUDA kernels on a GPU)."""

    def __init__(self, device: str = "cpu") -> None:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
        self.device = device
        self._profiler = profile(activities=activities, record_shapes=True)

    def start(self, warmup: int) -> None:
        self._profiler.__enter__()

    def stop(self, runs: int) -> Profile:
        self._profiler.__exit__(None, None, None)
        return Profile("torch", runs, torch_records(self._profiler.events(), runs, self.device))


class OnnxRuntimeRunProfiler:
    """onnxruntime's session profiler: the session was created with ``enable_profiling``; ``stop``
    ends it and reads the trace (the warm-up calls before ``start`` are left out by run window)."""

    def __init__(self, session: Any) -> None:
        self._session = session

    def start(self, warmup: int) -> None:
        """The session profiles from its creation; the runs before ``stop``'s last ``runs`` are dropped."""

    def stop(self, runs: int) -> Profile:
        trace = Path(self._session.end_profiling())
        try:
            return Profile("onnxruntime", runs, onnxruntime_records(trace, runs))
        finally:
            trace.unlink(missing_ok=True)


class OpenVinoRunProfiler:
    """OpenVINO's per-node counters of a predictor compiled with ``profiling=True``
    (:class:`rtdetr_spartan.deploy.openvino_runtime.OpenVinoPredictor`), one inference per call:
    read after the warm-up and after the profiled calls (see :func:`openvino_records`)."""

    def __init__(self, predictor: Any) -> None:
        self._predictor = predictor
        self._before: list[Any] = []
        self._warmup = 0

    def start(self, warmup: int) -> None:
        self._warmup = warmup
        self._before = self._predictor.profiling_info() if warmup else []

    def stop(self, runs: int) -> Profile:
        after = self._predictor.profiling_info()
        records = openvino_records(after, self._warmup + runs, self._before, self._warmup)
        not_run = sum(str(i.status).rsplit(".", 1)[-1] == "NOT_RUN" for i in after)
        return Profile("openvino", runs, records, not_run=not_run)
