"""Suite-wide settings.

The suite runs on small CPU machines where torchrun tests start several processes at once;
OpenMP's default spin-waiting then makes small ops (BatchNorm, depthwise convs) orders of
magnitude slower. Passive waiting must be set before the OpenMP runtime starts, i.e. before
torch is imported by any test module; child processes inherit it.

Every test gets torch's intra-op thread count back as it found it, so code that sets it (a
latency benchmark, a tool's ``--threads``) cannot slow down or change the tests after it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(autouse=True)
def _restore_torch_threads() -> Iterator[None]:
    import torch  # after OMP_WAIT_POLICY is set above

    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
