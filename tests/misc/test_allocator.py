"""retain_freed_memory in a fresh process (its settings hold once per process): the switch
honoured, a refused value reported, the thresholds set once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rtdetr_spartan.misc.allocator import ENV_SWITCH

REPO = Path(__file__).resolve().parents[2]

PROBE = f"""
import ctypes, ctypes.util, json, os
from rtdetr_spartan.misc.allocator import retain_freed_memory

libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
steps = {{}}

def run(name, refuse=False):
    calls = []
    def mallopt(param, value):
        calls.append([param, value])
        return 0 if refuse else libc.mallopt(param, value)  # 0: mallopt refused the value
    steps[name] = [retain_freed_memory(mallopt), calls]

os.environ["{ENV_SWITCH}"] = "0"
run("switched off")
os.environ.pop("{ENV_SWITCH}")
run("refused", refuse=True)
run("set")
run("set again")
print(json.dumps(steps))
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_switch_refusal_and_once_per_process() -> None:
    env = {k: v for k, v in os.environ.items() if k != ENV_SWITCH}
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=True
    )
    steps = json.loads(done.stdout.strip().splitlines()[-1])
    thresholds = [[-3, 32 * 2**20], [-1, 2**31 - 1]]  # M_MMAP_THRESHOLD 32 MiB, M_TRIM_THRESHOLD 2 GiB
    assert steps == {
        "switched off": [False, []],
        "refused": [False, thresholds[:1]],  # the first refusal stops it
        "set": [True, thresholds],
        "set again": [True, []],  # once per process
    }
