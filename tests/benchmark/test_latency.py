"""benchmark() and its parts through their public parameters: latency read on an injected clock,
FLOPs against a hand count, torch's thread count restored after a run."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from rtdetr_spartan.benchmark import benchmark, count_flops, time_calls
from rtdetr_spartan.misc.checkpoint import CheckpointError, save_atomic
from tests.train_utils import TINY_CONFIG

SIZE = 64


def fake_clock(call_ms: list[float]) -> Callable[[], float]:
    """A clock (seconds) that advances by the next of ``call_ms`` between a start and a stop read,
    and by 1 s between calls, so only the timed span can reach the result."""
    readings: list[float] = []
    now = 0.0
    for ms in call_ms:
        readings += [now, now + ms / 1000.0]
        now += ms / 1000.0 + 1.0
    it: Iterator[float] = iter(readings)
    return lambda: next(it)


def test_time_calls_reads_each_call_on_the_clock() -> None:
    calls: list[int] = []
    clock = fake_clock([12.0, 3.0, 7.5])
    times = time_calls(lambda: calls.append(1), runs=3, warmup=2, clock=clock)
    assert times == pytest.approx([12.0, 3.0, 7.5])
    assert len(calls) == 5  # warm-up calls run but are not timed
    with pytest.raises(ValueError, match="runs must be >= 1, got 0"):
        time_calls(lambda: None, runs=0, warmup=0)


def test_latency_comes_from_the_clock_and_threads_are_restored(restore_thread_count: int) -> None:
    torch.set_num_threads(2)
    clock = fake_clock([30.0, 10.0, 20.0])
    result = benchmark(TINY_CONFIG, size=SIZE, batch=2, threads=1, runs=3, warmup=1, clock=clock, flops=False)
    assert torch.get_num_threads() == 2
    assert (result.latency_ms, result.latency_mean_ms, result.latency_min_ms) == (20.0, 20.0, 10.0)
    assert result.throughput == 100.0  # 2 images per 20 ms
    assert (result.threads, result.batch, result.size, result.runs, result.warmup) == (1, 2, SIZE, 3, 1)
    assert result.gflops is None and result.gmacs is None  # flops=False: not counted
    assert result.params == sum(p.numel() for p in _tiny_model().parameters())


def _tiny_model() -> nn.Module:
    from rtdetr_spartan.deploy.from_config import load_config

    return load_config(TINY_CONFIG).build("model")


def test_flops_are_those_of_the_deploy_model_per_image() -> None:
    from rtdetr_spartan.deploy.from_config import build_deploy_model, load_config

    expected = count_flops(build_deploy_model(load_config(TINY_CONFIG)), 320)
    assert expected > 1e8  # large enough that the rounding below keeps three digits
    result = benchmark(TINY_CONFIG, size=320, batch=2, runs=1, warmup=0, clock=fake_clock([1.0]))
    assert result.gflops == round(expected / 1e9, 3) and result.gmacs == round(expected / 2e9, 3)


def test_threads_are_restored_when_the_run_fails(tmp_path: Path) -> None:
    torch.set_num_threads(2)
    path = save_atomic({"model": {"linear.weight": torch.zeros(4, 8)}, "task": "classification"}, tmp_path / "c.pth")
    with pytest.raises(CheckpointError, match=rf"{path} is a classification checkpoint.*a detector \(-r\)"):
        benchmark(TINY_CONFIG, size=SIZE, threads=1, checkpoint=path, runs=1, warmup=0)
    assert torch.get_num_threads() == 2
