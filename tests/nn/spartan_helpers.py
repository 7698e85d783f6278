"""Shared by the SpaRTAN tests: weights far from their init."""

from __future__ import annotations

import torch
from torch import nn


def randomize(module: nn.Module, seed: int) -> nn.Module:
    """Weights and BN statistics far from their init (layer scales near 1, not 1e-5)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if tensor.is_floating_point():
                fresh = torch.rand(tensor.shape, generator=gen)
                if name.endswith("running_var"):
                    tensor.copy_(0.5 + fresh)
                else:
                    tensor.copy_((fresh - 0.5) * (2.0 if tensor.dim() <= 1 else 0.6))
    return module
