"""Measurement: size, FLOPs, latency and per-op profiles of a config's detector or an exported
model, in eager PyTorch, onnxruntime and OpenVINO."""

from rtdetr_spartan.benchmark.flops import count_flops
from rtdetr_spartan.benchmark.latency import BACKENDS, BenchmarkResult, benchmark, cpu_name, time_calls
from rtdetr_spartan.benchmark.profiling import Profile, format_table, read_profile_json, write_profile

__all__ = [
    "BACKENDS",
    "BenchmarkResult",
    "Profile",
    "benchmark",
    "count_flops",
    "cpu_name",
    "format_table",
    "read_profile_json",
    "time_calls",
    "write_profile",
]
