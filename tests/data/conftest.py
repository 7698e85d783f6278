"""Shared fixtures for the data tests: a small generated shapes dataset."""

from __future__ import annotations

from pathlib import Path

import pytest

from rtdetr_spartan.data.shapes import make_detection_dataset


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``root/{train,val}/*.jpg`` and ``root/annotations/instances_{train,val}.json``."""
    root = tmp_path_factory.mktemp("shapes")
    make_detection_dataset(root, train=16, val=8, size=96, seed=0)
    return root
