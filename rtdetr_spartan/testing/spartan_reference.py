# Follows the design of SpaRTAN (henry-pay/SpaRTAN, Apache-2.0).
"""SpaRTAN's forward computed directly as the reference formulates it, on this project's modules
and weights: NCHW maps, separate BatchNorm and squeeze-excite passes, argmax + gather, the channel
rotation through torch's complex dtype between permute/contiguous copies.

Not used by the model. It is the oracle the canonical layers (``nn/backbones/spartan_layers``)
and their conversions are tested against, written independently of them (its own rotation and
squeeze-excite), and the "reference-style" speed baseline of ``benchmarks/spartan_latency.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rtdetr_spartan.nn.backbones.spartan import SpaRTAN
from rtdetr_spartan.nn.backbones.spartan_layers import Block, CMixer, ConvNormAct, SMixer, SqueezeExcite

__all__ = [
    "ReferenceStyleSpaRTAN",
    "cmixer_forward",
    "complex_rotate",
    "conv_norm_act",
    "smixer_forward",
    "squeeze_excite",
]


def conv_norm_act(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A ``ConvNormAct`` as three separate passes: conv, norm, activation."""
    assert isinstance(layer, ConvNormAct)
    x = layer.norm(layer.conv(x))
    return x if layer.act is None else layer.act(x)


def _conv1x1(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A plain 1x1 conv with ``conv``'s weights (the output projections' forward takes tokens)."""
    return F.conv2d(x, conv.weight, conv.bias)


def squeeze_excite(se: SqueezeExcite, x: torch.Tensor) -> torch.Tensor:
    """x: [B, C, H, W] -> x * sigmoid(expand(relu(squeeze(mean_hw x))))."""
    return x * torch.sigmoid(se.expand(F.relu(se.squeeze(F.adaptive_avg_pool2d(x, 1)))))


def complex_rotate(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """x: [..., E] pairs (re, im) times rotation [E/2, 2] through torch's complex dtype."""
    pairs = torch.view_as_complex(x.unflatten(-1, (-1, 2)).contiguous())
    return torch.view_as_real(pairs * torch.view_as_complex(rotation.contiguous())).flatten(-2)


def smixer_forward(m: SMixer, x: torch.Tensor) -> torch.Tensor:
    """``SMixer`` (without ``out_scale``): x [B, C, H, W] -> [B, C, H, W]."""
    y = m.proj_in(x)
    y = y + m.gamma * (y - F.adaptive_avg_pool2d(y, 1))
    short = squeeze_excite(m.h_attn, conv_norm_act(m.h_conv, y))
    long = squeeze_excite(m.l_attn, conv_norm_act(m.l_conv[1], conv_norm_act(m.l_conv[0], y)))
    return _conv1x1(m.proj_out, torch.cat((short, long), dim=1))


def cmixer_forward(m: CMixer, x: torch.Tensor) -> torch.Tensor:
    """``CMixer`` (without ``out_scale``): x [B, C, H, W] -> [B, C, H, W]."""
    index = x.argmax(dim=1, keepdim=True)
    theta = F.gelu(m.theta(x))
    weight = m.proj(x)
    feat = weight * theta + weight.gather(1, index) * theta.gather(1, index)
    feat = complex_rotate(feat.permute(0, 2, 3, 1), m.complex.view(-1, 2)).permute(0, 3, 1, 2)
    return _conv1x1(m.proj_out, squeeze_excite(m.attn, conv_norm_act(m.conv, feat.contiguous())))


class ReferenceStyleSpaRTAN(nn.Module):
    """A SpaRTAN backbone's weights run through the reference's forward formulation."""

    def __init__(self, backbone: SpaRTAN) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: [B, 3, H, W] -> the backbone's stage outputs (NCHW)."""
        net = self.backbone
        x = conv_norm_act(net.conv[1], conv_norm_act(net.conv[0], x))
        taps = {net._stage_ends[i] for i in net.return_idx}
        outs = []
        for index, layer in enumerate(net.layers):
            if isinstance(layer, Block):
                x = x + layer.scale_1 * smixer_forward(layer.smixer, layer.norm_1(x))
                x = x + layer.scale_2 * cmixer_forward(layer.cmixer, layer.norm_2(x))
            else:
                x = conv_norm_act(layer, x)
            if index in taps:
                outs.append(x)
        return outs
