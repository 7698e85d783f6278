"""The one answer to "is this forward being traced?" for layers that cache shape-dependent tensors."""

from __future__ import annotations

import torch

__all__ = ["is_tracing"]


def is_tracing() -> bool:
    """True while TorchScript traces or scripts, ``torch.compile``/``torch.export`` compiles, or an
    ONNX export runs: shapes may be symbolic there, so shape-keyed caches must not be used (the
    values computed without them are the same)."""
    return (
        torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.compiler.is_compiling()
        or torch.onnx.is_in_onnx_export()
    )
