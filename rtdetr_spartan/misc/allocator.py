"""Keep freed CPU tensor memory in the process instead of returning it to the OS after each step.

PyTorch's CPU tensors come from the C allocator. glibc serves blocks above its mmap threshold
(at most 32 MiB) with fresh ``mmap`` pages and unmaps them on free, and trims the heap top when
more than its trim threshold is free. A training step frees and reallocates its activation maps
every iteration, so each step page-faults (zero-fills) them afresh: on the 2-core CPU this
project measures, a 3x3 depthwise conv's forward and backward at 4x128x80x80 took 15-20 ms that
way and 7-8 ms with the memory kept. PyTorch's CPU tuning guide gets the same effect by
preloading jemalloc or tcmalloc; ``retain_freed_memory`` does it in-process for glibc, with
``mallopt``: heap blocks up to 32 MiB, and freed memory kept up to 2 GiB.

The training tools call it when they train on the CPU (``BaseSolver``); set
``RTDETR_SPARTAN_MALLOC_TUNING=0`` to leave the allocator alone. Other C libraries (macOS,
musl) are left as they are.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
from collections.abc import Callable
from typing import cast

__all__ = ["ENV_SWITCH", "retain_freed_memory"]

logger = logging.getLogger(__name__)

ENV_SWITCH = "RTDETR_SPARTAN_MALLOC_TUNING"
# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 32 * 2**20  # glibc's largest mmap threshold on 64-bit systems
_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: keep up to 2 GiB of freed memory
_applied = False


def retain_freed_memory(mallopt: Callable[[int, int], int] | None = None) -> bool:
    """Raise glibc's mmap and trim thresholds once per process; returns whether they are set.

    False (and nothing changes) off glibc, when ``RTDETR_SPARTAN_MALLOC_TUNING=0``, or when
    ``mallopt`` refuses a value. ``mallopt``: the C library's ``mallopt(param, value)`` to call
    (default: glibc's, None elsewhere); a caller may wrap it to see what is set.
    """
    global _applied
    if _applied:
        return True
    if os.environ.get(ENV_SWITCH, "1") == "0":
        logger.debug("%s=0: the C allocator keeps its defaults", ENV_SWITCH)
        return False
    mallopt = mallopt or _glibc_mallopt()
    if mallopt is None:
        return False
    if not (mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)):
        logger.warning("mallopt refused the mmap/trim thresholds; the C allocator keeps its defaults")
        return False
    _applied = True
    logger.info("CPU allocator: freed tensor memory up to 2 GiB is kept for reuse (%s=0 turns this off)", ENV_SWITCH)
    return True


def _glibc_mallopt() -> Callable[[int, int], int] | None:
    """glibc's ``mallopt``, or None when the process does not run on glibc."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - only glibc defines it
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return cast(Callable[[int, int], int], mallopt)
