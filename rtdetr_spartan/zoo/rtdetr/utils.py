# Follows the design of RT-DETR (lyuwenyu/RT-DETR, Apache-2.0).
"""Small building blocks of the RT-DETR decoder: logit helpers, the box/query MLP and the
multi-scale deformable attention core (pure PyTorch, ``F.grid_sample``, so it exports to ONNX)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "inverse_sigmoid",
    "bias_init_with_prob",
    "activation_function",
    "activation_module",
    "MLP",
    "deformable_attention_core",
]

_ACTIVATION_MODULES: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True),
    "gelu": nn.GELU,
    "silu": lambda: nn.SiLU(inplace=True),
    "leaky_relu": lambda: nn.LeakyReLU(inplace=True),
    "identity": nn.Identity,
}

_ACTIVATION_FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,
    "silu": F.silu,
    "leaky_relu": F.leaky_relu,
}


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Logit of ``x`` clipped to [0, 1]; both odds terms are clamped at ``eps`` (reference rule)."""
    x = x.clip(min=0.0, max=1.0)
    return torch.log(x.clip(min=eps) / (1 - x).clip(min=eps))


def bias_init_with_prob(prior_prob: float = 0.01) -> float:
    """Bias whose sigmoid equals ``prior_prob`` (focal-loss style classifier init)."""
    return float(-math.log((1 - prior_prob) / prior_prob))


def activation_module(name: str) -> nn.Module:
    """An activation layer by name (``relu``, ``gelu``, ``silu``, ``leaky_relu``, ``identity``)."""
    try:
        return _ACTIVATION_MODULES[name.lower()]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; valid: {sorted(_ACTIVATION_MODULES)}") from None


def activation_function(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """A functional activation by name (``relu``, ``gelu``, ``silu``, ``leaky_relu``)."""
    try:
        return _ACTIVATION_FUNCTIONS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; valid: {sorted(_ACTIVATION_FUNCTIONS)}") from None


class MLP(nn.Module):
    """``num_layers`` linear layers with an activation between them (none after the last)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int, act: str = "relu") -> None:
        super().__init__()
        widths = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(widths[:-1], widths[1:]))
        self.act = activation_module(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., input_dim] -> [..., output_dim]."""
        last = len(self.layers) - 1
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < last:
                x = self.act(x)
        return x


def deformable_attention_core(
    value: torch.Tensor,
    spatial_shapes: Sequence[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Bilinear sampling of every level at the given points, weighted and summed per head.

    Args:
        value: [B, sum(H_l * W_l), heads, head_dim], the levels flattened row-major and concatenated.
        spatial_shapes: (H_l, W_l) per level.
        sampling_locations: [B, Q, heads, levels, points, 2] as (x, y) in [0, 1] of each level.
        attention_weights: [B, Q, heads, levels, points], softmax-normalized over levels*points.

    Returns:
        [B, Q, heads * head_dim].
    """
    batch, _, heads, head_dim = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    per_level = value.split([h * w for h, w in spatial_shapes], dim=1)
    # grid_sample wants (x, y) in [-1, 1]; align_corners=False puts pixel centers at (i + 0.5) / W.
    grids = 2 * sampling_locations - 1
    sampled = []
    for level, (h, w) in enumerate(spatial_shapes):
        # [B, H*W, heads, d] -> [B*heads, d, H, W]
        level_value = per_level[level].flatten(2).permute(0, 2, 1).reshape(batch * heads, head_dim, h, w)
        # [B, Q, heads, points, 2] -> [B*heads, Q, points, 2]
        level_grid = grids[:, :, :, level].permute(0, 2, 1, 3, 4).flatten(0, 1)
        # -> [B*heads, d, Q, points]
        sampled.append(
            F.grid_sample(level_value, level_grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        )
    # [B, Q, heads, levels, points] -> [B*heads, 1, Q, levels*points]
    weights = attention_weights.permute(0, 2, 1, 3, 4).reshape(batch * heads, 1, queries, levels * points)
    # [B*heads, d, Q, levels*points] -> [B, heads*d, Q]
    output = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)
    return output.reshape(batch, heads * head_dim, queries).permute(0, 2, 1)
