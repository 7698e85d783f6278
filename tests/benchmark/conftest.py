"""Every benchmark test leaves torch's process-wide thread count as it found it, so a test that
fails half-way (or a benchmark that would leak it) cannot slow down or skew the tests after it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def restore_thread_count() -> Iterator[int]:
    before = torch.get_num_threads()
    yield before
    torch.set_num_threads(before)
