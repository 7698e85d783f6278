"""Checkpoint files: atomic writes and model-weight loading from the published layouts.

Published RT-DETR checkpoints store weights as ``{'ema': {'module': sd}}``, ``{'model': sd}`` or
a bare state dict; all three load here, EMA weights first.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

logger = logging.getLogger(__name__)


def save_atomic(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then rename it over ``path``.

    A crash mid-write leaves the previous file intact (rename is atomic on POSIX).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint file on the CPU; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many types for corrupt files
        raise ValueError(f"checkpoint {path} cannot be read: {err}") from err
    if not isinstance(obj, Mapping):
        raise ValueError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict")
    return dict(obj)


def extract_state_dict(obj: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Model weights from any published layout: EMA weights, else ``model``, else a bare dict.

    A ``module.`` prefix left by DistributedDataParallel is removed.
    """
    if isinstance(obj.get("ema"), Mapping) and "module" in obj["ema"]:
        state = obj["ema"]["module"]
    elif isinstance(obj.get("model"), Mapping):
        state = obj["model"]
    elif isinstance(obj.get("state_dict"), Mapping):
        state = obj["state_dict"]
    else:
        state = obj
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(f"no tensors found in checkpoint (keys: {sorted(obj)[:10]})")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k.removeprefix("module."): v for k, v in tensors.items()}
    return tensors


@dataclass
class LoadReport:
    """What a weight load did: tensors loaded, and those it skipped with the reason."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    def describe(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors"]
        for label, names in (
            ("missing in checkpoint", self.missing),
            ("not in model", self.unexpected),
            ("shape mismatch", self.mismatched),
        ):
            if names:
                shown = ", ".join(names[:8]) + (f", ... (+{len(names) - 8})" if len(names) > 8 else "")
                lines.append(f"{label}: {len(names)} ({shown})")
        return "; ".join(lines)


def load_model_weights(
    model: torch.nn.Module, source: str | Path | Mapping[str, Any], strict: bool = True
) -> LoadReport:
    """Load weights into ``model`` from a checkpoint path or an already-read checkpoint.

    ``strict=True``: names and shapes must match exactly (error lists the differences).
    ``strict=False`` (tuning): load the entries whose names and shapes match, report the rest —
    e.g. a class head of another size.
    """
    ckpt = load_checkpoint(source) if isinstance(source, (str, Path)) else source
    state = extract_state_dict(ckpt)
    own = model.state_dict()
    report = LoadReport()
    usable: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if name not in own:
            report.unexpected.append(name)
        elif own[name].shape != tensor.shape:
            report.mismatched.append(f"{name} {tuple(tensor.shape)} vs model {tuple(own[name].shape)}")
        else:
            usable[name] = tensor
    report.missing = [n for n in own if n not in state]
    report.loaded = list(usable)
    if strict and (report.missing or report.unexpected or report.mismatched):
        raise ValueError(
            f"checkpoint does not match the model ({report.describe()}); "
            "use tuning (strict=False) to load only matching tensors"
        )
    model.load_state_dict(usable, strict=False)
    logger.info("weights: %s", report.describe())
    return report
