"""Helpers for the training tests: a tiny generated shapes dataset and the tiny RT-DETR config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rtdetr_spartan.core import YAMLConfig
from rtdetr_spartan.data.shapes import make_detection_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO_ROOT / "tests" / "fixtures" / "configs" / "rtdetr_tiny_shapes.yml"
TINY_SPARTAN_CONFIG = REPO_ROOT / "tests" / "fixtures" / "configs" / "rtdetr_tiny_spartan_shapes.yml"
TRAIN_TOOL = REPO_ROOT / "tools" / "train.py"


def make_tiny_dataset(root: Path, train: int = 8, val: int = 4, size: int = 96) -> Path:
    """A generated shapes dataset in ``root``; images are ``size`` px, the model sees 64 px."""
    make_detection_dataset(root, train=train, val=val, size=size, seed=0)
    return root


def dataset_overrides(root: Path, train_ann: Path | None = None) -> dict[str, Any]:
    """Config overrides pointing both loaders at the dataset in ``root``."""
    ann = root / "annotations"
    return {
        "train_dataloader": {
            "dataset": {"img_folder": str(root / "train"), "ann_file": str(train_ann or ann / "instances_train.json")}
        },
        "val_dataloader": {"dataset": {"img_folder": str(root / "val"), "ann_file": str(ann / "instances_val.json")}},
    }


def tiny_cfg(data_root: Path, output_dir: Path, config: Path = TINY_CONFIG, **overrides: Any) -> YAMLConfig:
    """The tiny detection config on the dataset in ``data_root``: CPU, batch 2, ``overrides`` on top."""
    base = {
        **dataset_overrides(data_root),
        "output_dir": str(output_dir),
        "device": "cpu",
        "train_dataloader": {**dataset_overrides(data_root)["train_dataloader"], "batch_size": 2},
    }
    return YAMLConfig(config, **{**base, **overrides})


def as_cli_updates(overrides: dict[str, Any], prefix: str = "") -> list[str]:
    """``{'a': {'b': 1}}`` -> ``['a.b=1']`` for ``tools/train.py -u``."""
    items: list[str] = []
    for key, value in overrides.items():
        if isinstance(value, dict):
            items += as_cli_updates(value, f"{prefix}{key}.")
        else:
            items.append(f"{prefix}{key}={json.dumps(value)}")
    return items


def run_torchrun(
    args: Sequence[str],
    timeout: float,
    nproc: int = 2,
    *,
    tool: Path = TRAIN_TOOL,
    torchrun_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone --nproc-per-node=N [TORCHRUN_ARGS] TOOL ARGS`` on the CPU, one
    thread each; ``env`` adds variables to the environment."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        *torchrun_args,
        str(tool),
        *args,
    ]
    return subprocess.run(command, cwd=REPO_ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
