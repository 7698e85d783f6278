from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rtdetr_spartan.nn.common import (
    ConvNormLayer,
    FrozenBatchNorm2d,
    fold_batch_norm,
    freeze_batch_norm,
    get_activation,
)


@pytest.mark.parametrize(
    "name, cls",
    [("relu", nn.ReLU), ("SiLU", nn.SiLU), ("gelu", nn.GELU), ("leaky_relu", nn.LeakyReLU), ("identity", nn.Identity)],
)
def test_get_activation_by_name(name: str, cls: type) -> None:
    module = get_activation(name)
    assert type(module) is cls
    if hasattr(module, "inplace"):
        assert module.inplace is True  # reference default
    assert get_activation(name, inplace=False).__dict__.get("inplace", False) is False


def test_get_activation_none_and_module() -> None:
    assert isinstance(get_activation(None), nn.Identity)
    custom = nn.Hardtanh()
    assert get_activation(custom) is custom


def test_get_activation_unknown_name_lists_choices() -> None:
    with pytest.raises(ValueError, match="'mish'.*silu"):
        get_activation("mish")


def test_conv_norm_layer_names_and_shapes() -> None:
    layer = ConvNormLayer(3, 8, 3, 2, act="relu")
    assert list(layer.state_dict()) == [
        "conv.weight",
        "norm.weight",
        "norm.bias",
        "norm.running_mean",
        "norm.running_var",
        "norm.num_batches_tracked",
    ]
    assert layer.conv.padding == (1, 1) and layer.conv.bias is None
    out = layer(torch.randn(2, 3, 15, 16))
    assert out.shape == (2, 8, 8, 8)
    assert out.min() >= 0
    assert ConvNormLayer(3, 8, 1, 1, padding=0, bias=True).conv.bias is not None


def _randomized_bn(channels: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels, eps=1e-3)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 1.5)
    return bn.eval()


def test_freeze_batch_norm_keeps_eval_output_and_order() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), _randomized_bn(4), nn.ReLU(), nn.Sequential(nn.Conv2d(4, 6, 1), _randomized_bn(6))
    )
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        expected = model(x)
    names_before = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    assert freeze_batch_norm(model) is model
    assert isinstance(model[1], FrozenBatchNorm2d) and isinstance(model[3][1], FrozenBatchNorm2d)
    assert model[1].eps == 1e-3
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert list(model.state_dict()) == names_before
    assert len(list(model.parameters())) == 4  # only the two convs' weights and biases
    model.train()  # frozen statistics are used in training mode too
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


def test_freeze_batch_norm_on_a_batch_norm_returns_replacement() -> None:
    bn = _randomized_bn(5)
    frozen = freeze_batch_norm(bn)
    assert isinstance(frozen, FrozenBatchNorm2d)
    torch.testing.assert_close(frozen.running_var, bn.running_var)


def test_frozen_batch_norm_matches_reference_conventions() -> None:
    frozen = FrozenBatchNorm2d(3)
    assert frozen.eps == 1e-5
    state = nn.BatchNorm2d(3).state_dict()  # includes num_batches_tracked
    assert list(frozen.state_dict()) == ["weight", "bias", "running_mean", "running_var"]
    frozen.load_state_dict(state, strict=True)


@pytest.mark.parametrize("frozen", [False, True], ids=["eval_batch_norm", "frozen_batch_norm"])
def test_fold_batch_norm_equals_conv_then_norm(frozen: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1)
    norm = nn.BatchNorm2d(6, eps=1e-3)
    with torch.no_grad():
        for tensor in (norm.weight, norm.bias, norm.running_mean):
            tensor.copy_(torch.randn(6, generator=gen))
        norm.running_var.copy_(torch.rand(6, generator=gen) + 0.5)
    norm = freeze_batch_norm(norm) if frozen else norm.eval()
    x = torch.randn(2, 4, 7, 5, generator=gen)
    weight, bias = fold_batch_norm(norm, conv.weight, conv.bias)
    with torch.no_grad():
        torch.testing.assert_close(F.conv2d(x, weight, bias, padding=1), norm(conv(x)), rtol=1e-5, atol=1e-5)


def test_fold_batch_norm_refuses_batch_statistics_and_other_norms() -> None:
    weight = torch.ones(3, 3, 1, 1)
    with pytest.raises(ValueError, match=r"BatchNorm2d\(3\): it normalizes with batch statistics"):
        fold_batch_norm(nn.BatchNorm2d(3).train(), weight)
    with pytest.raises(TypeError, match="cannot fold a GroupNorm"):
        fold_batch_norm(nn.GroupNorm(1, 3), weight)
