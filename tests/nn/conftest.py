"""Fixtures of the model tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Run on one intra-op thread (restored afterwards): as fast for these small inputs, and
    immune to OpenMP's spin-waiting on an oversubscribed machine, where two threads can make
    a train-mode BatchNorm call take tens of milliseconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
