"""count_flops: FLOPs = 2 x MACs of the matrix products and convolutions, per image."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rtdetr_spartan.benchmark.flops import count_flops
from rtdetr_spartan.deploy.export import DeployModel
from rtdetr_spartan.deploy.from_config import load_config
from tests.deploy.deploy_utils import R18_CONFIG

SIZE = 128


class _ConvThenLinear(nn.Module):
    """3 -> 4 channels, 3x3, on [1, 3, S, S]; then a [16 -> 5] product on the pooled 4x4 map."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.linear = nn.Linear(16, 5)

    def forward(self, images: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        return self.linear(self.pool(self.conv(images)).flatten(1)) * sizes.sum()


def test_flops_equal_a_hand_count() -> None:
    size = 16
    conv_macs = 4 * 3 * 3 * 3 * size * size  # out channels x in channels x kernel x output pixels
    linear_macs = 16 * 5
    assert count_flops(_ConvThenLinear(), size) == 2 * (conv_macs + linear_macs)


def test_flops_include_the_encoder_attention() -> None:
    """One AIFI layer adds its projections, attention products and FFN (FLOPs = 2 x MACs); the
    attention products are missed by the counter unless the math SDPA kernel runs."""
    flops = {}
    for layers in (0, 1):
        cfg = load_config(R18_CONFIG, [f"HybridEncoder.num_encoder_layers={layers}"])
        flops[layers] = count_flops(DeployModel(cfg.build("model"), cfg.build("postprocessor")), SIZE)
    tokens, dim, ffn = (SIZE // 32) ** 2, 256, 1024
    macs = 4 * tokens * dim * dim + 2 * tokens * tokens * dim + 2 * tokens * dim * ffn
    assert flops[1] - flops[0] == pytest.approx(2 * macs, rel=1e-6)
