"""The reference parity fixtures of this repository (``tests/fixtures/parity``) and the checks of
:mod:`rtdetr_spartan.testing.parity`, bound to them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rtdetr_spartan.testing import parity
from rtdetr_spartan.testing.parity import (
    Spec,
    detector_parity,
    matched_fraction,
    state_dict_spec,
    summary_problems,
    synthetic_scenes,
    synthetic_state_dict,
)

FIXTURES = Path(__file__).parent / "fixtures" / "parity"

__all__ = [
    "FIXTURES",
    "Spec",
    "detector_parity",
    "load_expected",
    "load_spec",
    "matched_fraction",
    "state_dict_spec",
    "summary_problems",
    "synthetic_scenes",
    "synthetic_state_dict",
]


def load_spec(name: str) -> tuple[Spec, int]:
    return parity.load_spec(name, FIXTURES)


def load_expected(name: str) -> Any:
    return parity.load_expected(name, FIXTURES)
