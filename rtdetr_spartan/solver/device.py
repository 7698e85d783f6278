"""The run's device and autocast dtype from the config (``device``, ``use_amp``, ``amp_dtype``)."""

from __future__ import annotations

import torch

from rtdetr_spartan.core import ConfigError, YAMLConfig
from rtdetr_spartan.misc import dist

__all__ = ["AMP_DTYPES", "resolve_amp_dtype", "select_device"]

AMP_DTYPES: dict[str, torch.dtype] = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def select_device(requested: str | None) -> torch.device:
    """``cpu``, ``cuda`` or ``None`` (CUDA when available); distributed CUDA runs use
    ``cuda:LOCAL_RANK``."""
    name = (requested or ("cuda" if torch.cuda.is_available() else "cpu")).lower()
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ConfigError(f"device: expected 'cpu' or 'cuda', got {requested!r}")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device: {requested!r} requested but CUDA is not available")
        if dist.is_dist_initialized():
            return torch.device("cuda", dist.get_local_rank())
    return torch.device(name)


def resolve_amp_dtype(cfg: YAMLConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or ``None`` without AMP. CPU AMP is bfloat16 only (opt-in)."""
    if not cfg.use_amp:
        return None
    default = "float16" if device.type == "cuda" else "bfloat16"
    name = str(cfg.get("amp_dtype") or default)
    if name not in AMP_DTYPES:
        raise ConfigError(f"amp_dtype: expected one of {sorted(AMP_DTYPES)}, got {name!r}")
    if device.type == "cpu" and name != "bfloat16":
        raise ConfigError(f"amp_dtype: {name} autocast is not supported on the CPU; use bfloat16")
    return AMP_DTYPES[name]
