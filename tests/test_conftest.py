"""The suite's autouse fixture gives torch's thread count back after a test that changes it
(the second test runs after the first in file order)."""

from __future__ import annotations

import torch

_BEFORE: list[int] = []


def test_a_test_that_changes_the_thread_count() -> None:
    _BEFORE.append(torch.get_num_threads())
    torch.set_num_threads(2 if _BEFORE[0] == 1 else 1)
    assert torch.get_num_threads() != _BEFORE[0]


def test_the_next_test_finds_it_restored() -> None:
    expected = _BEFORE[0] if _BEFORE else torch.get_num_threads()  # alone (-k): nothing to restore
    assert torch.get_num_threads() == expected
