from __future__ import annotations

import math

import pytest
import torch

from rtdetr_spartan.zoo.rtdetr.utils import (
    MLP,
    bias_init_with_prob,
    deformable_attention_core,
    inverse_sigmoid,
)


def test_inverse_sigmoid() -> None:
    x = torch.tensor([0.1, 0.5, 0.9])
    torch.testing.assert_close(torch.sigmoid(inverse_sigmoid(x)), x)
    edges = inverse_sigmoid(torch.tensor([-1.0, 0.0, 1.0, 2.0]))
    floor = math.log(1e-5)
    torch.testing.assert_close(edges, torch.tensor([floor, floor, -floor, -floor]))


def test_bias_init_with_prob() -> None:
    assert torch.sigmoid(torch.tensor(bias_init_with_prob(0.01))).item() == pytest.approx(0.01)


def test_mlp_shapes_and_activation_placement() -> None:
    mlp = MLP(4, 16, 3, num_layers=3)
    assert [tuple(layer.weight.shape) for layer in mlp.layers] == [(16, 4), (16, 16), (3, 16)]
    x = torch.randn(2, 5, 4)
    want = mlp.layers[2](torch.relu(mlp.layers[1](torch.relu(mlp.layers[0](x)))))
    torch.testing.assert_close(mlp(x), want)
    with pytest.raises(ValueError, match="unknown activation"):
        MLP(4, 4, 4, 2, act="swish-ish")


def _bilinear(image: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """image [C, H, W]; (x, y) in [0, 1] with pixel centers at (i + 0.5) / size; zeros outside."""
    _, height, width = image.shape
    px, py = x * width - 0.5, y * height - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    total = torch.zeros(image.shape[0])
    for xi, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
        for yi, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
            if 0 <= xi < width and 0 <= yi < height:
                total += wx * wy * image[:, yi, xi]
    return total


def test_deformable_core_matches_naive_sampling() -> None:
    g = torch.Generator().manual_seed(0)
    shapes = [(4, 5), (2, 3)]
    batch, heads, dim, queries, points = 2, 2, 3, 4, 2
    value = torch.randn(batch, sum(h * w for h, w in shapes), heads, dim, generator=g)
    locations = -0.1 + 1.2 * torch.rand(batch, queries, heads, len(shapes), points, 2, generator=g)
    weights = torch.rand(batch, queries, heads, len(shapes), points, generator=g)

    got = deformable_attention_core(value, shapes, locations, weights)
    assert got.shape == (batch, queries, heads * dim)

    starts = [0, shapes[0][0] * shapes[0][1]]
    for b in range(batch):
        for q in range(queries):
            for m in range(heads):
                want = torch.zeros(dim)
                for level, (h, w) in enumerate(shapes):
                    image = value[b, starts[level] : starts[level] + h * w, m].T.reshape(dim, h, w)
                    for p in range(points):
                        x, y = locations[b, q, m, level, p].tolist()
                        want += weights[b, q, m, level, p] * _bilinear(image, x, y)
                torch.testing.assert_close(got[b, q, m * dim : (m + 1) * dim], want, atol=1e-5, rtol=1e-5)
