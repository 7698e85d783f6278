"""retain_freed_memory: glibc thresholds set once, the switch honoured, torch unaffected."""

from __future__ import annotations

import sys

import pytest
import torch

from rtdetr_spartan.misc import allocator


def test_switch_off_leaves_the_allocator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocator, "_applied", False)
    monkeypatch.setenv(allocator.ENV_SWITCH, "0")
    assert allocator.retain_freed_memory() is False
    assert allocator._applied is False


@pytest.mark.skipif(not sys.platform.startswith("linux") or allocator._glibc_mallopt() is None, reason="glibc only")
def test_sets_the_thresholds_once_on_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocator, "_applied", False)
    monkeypatch.delenv(allocator.ENV_SWITCH, raising=False)
    calls: list[tuple[int, int]] = []
    real = allocator._glibc_mallopt()
    assert real is not None

    def recording(param: int, value: int) -> int:
        calls.append((param, value))
        return int(real(param, value))

    monkeypatch.setattr(allocator, "_glibc_mallopt", lambda: recording)
    assert allocator.retain_freed_memory() is True
    assert allocator.retain_freed_memory() is True  # once per process
    assert calls == [(-3, 32 * 2**20), (-1, 2**31 - 1)]
    big = torch.ones(4, 2**20)  # 16 MiB, now from the heap: still ordinary memory
    assert big.sum().item() == 4 * 2**20
