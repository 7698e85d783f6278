"""FLOPs of a deploy model (model + postprocessor) per image, with ``torch.utils.flop_counter``.

The counter counts a multiply-add as 2 FLOPs (FLOPs = 2 x MACs) and only matrix products and
convolutions (not elementwise ops, grid sampling or top-k, which are a small share here).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from rtdetr_spartan.deploy.export import sample_inputs

__all__ = ["count_flops"]


def count_flops(module: nn.Module, size: int) -> float:
    """FLOPs (2 x MACs) of one ``size`` x ``size`` image through ``module``, called as a deploy
    model is: ``module(images [1, 3, size, size], orig_target_sizes [1, 2])``.

    Attention runs with PyTorch's math SDPA kernel here: the counter has no formula for the
    fused CPU attention kernels, so it would silently drop the attention products (Q K^T, A V).
    """
    images, sizes = sample_inputs((size, size), 1)
    counter = FlopCounterMode(display=False)
    with counter, sdpa_kernel(SDPBackend.MATH), torch.no_grad():
        module(images, sizes)
    return float(counter.get_total_flops())
