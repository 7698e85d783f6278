"""Random-number-generator states for checkpoints: every rank's python, NumPy, torch (CPU and
CUDA) and data-order generator, saved so that a resumed run continues exactly as an
uninterrupted one."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["preserved_rng", "rng_state", "set_rng_state"]


def _numpy_rng_state() -> tuple[str, list[int], int, int, float]:
    """NumPy's global RNG state with plain Python values (its key as a list, not an array), so
    that checkpoints load with ``torch.load(weights_only=True)``; ``np.random.set_state``
    accepts it unchanged."""
    name, key, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return str(name), np.asarray(key).tolist(), int(pos), int(has_gauss), float(cached)


def rng_state(device: torch.device, data_generator: torch.Generator | None) -> dict[str, Any]:
    """This process's generator states (``data``: the training loader's generator)."""
    state: dict[str, Any] = {"python": random.getstate(), "numpy": _numpy_rng_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    if data_generator is not None:
        state["data"] = data_generator.get_state()
    return state


def set_rng_state(state: Mapping[str, Any], device: torch.device, data_generator: torch.Generator | None) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
    if data_generator is not None and "data" in state:
        data_generator.set_state(state["data"])


@contextlib.contextmanager
def preserved_rng(device: torch.device) -> Iterator[None]:
    """Run the block without changing the global generators (evaluation draws a loader seed):
    training after an evaluation then continues as a run resumed from the checkpoint written
    before it."""
    saved = rng_state(device, None)
    try:
        yield
    finally:
        set_rng_state(saved, device, None)
