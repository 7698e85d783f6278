# Follows the design of RT-DETR (lyuwenyu/RT-DETR, Apache-2.0).
"""Layers shared by the backbones and the encoder: activations, conv + norm + act, frozen BN, and
folding a BatchNorm into the conv before it."""

from __future__ import annotations

from typing import Callable, cast

import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

__all__ = [
    "ConvNormLayer",
    "FrozenBatchNorm2d",
    "fold_batch_norm",
    "freeze_batch_norm",
    "get_activation",
]

# torchvision's FrozenBatchNorm2d has the reference's buffer names (weight, bias, running_mean,
# running_var), its eps (1e-5), its forward (x * w * rsqrt(var + eps) + b - mean * scale) and also
# drops `num_batches_tracked` on load, so it is used as is.

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
    "hardswish": nn.Hardswish,
    "hardsigmoid": nn.Hardsigmoid,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "identity": nn.Identity,
    "none": nn.Identity,
}


def get_activation(act: str | nn.Module | None, inplace: bool = True) -> nn.Module:
    """An activation module from its name (case-insensitive), a module, or None (identity).

    As in the reference, activations that support it run in place by default.
    """
    if act is None:
        return nn.Identity()
    if isinstance(act, nn.Module):
        module = act
    elif isinstance(act, str) and act.lower() in _ACTIVATIONS:
        module = _ACTIVATIONS[act.lower()]()
    else:
        raise ValueError(f"unknown activation {act!r}; expected None, an nn.Module or one of {sorted(_ACTIVATIONS)}")
    if hasattr(module, "inplace"):
        setattr(module, "inplace", inplace)  # noqa: B010 (a plain attribute, not a tensor or module)
    return module


class ConvNormLayer(nn.Module):
    """Conv2d -> BatchNorm2d -> activation; state-dict names ``conv.*`` and ``norm.*``.

    Padding defaults to ``(kernel_size - 1) // 2`` ("same" for odd kernels at stride 1).
    """

    def __init__(
        self,
        ch_in: int,
        ch_out: int,
        kernel_size: int,
        stride: int,
        padding: int | None = None,
        bias: bool | None = False,
        act: str | nn.Module | None = None,
    ) -> None:
        super().__init__()
        pad = (kernel_size - 1) // 2 if padding is None else padding
        self.conv = nn.Conv2d(ch_in, ch_out, kernel_size, stride, padding=pad, bias=bool(bias))
        self.norm = nn.BatchNorm2d(ch_out)
        self.act = get_activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, ch_in, H, W] -> [B, ch_out, H', W'] with H' = (H + 2 pad - k) // stride + 1."""
        return self.act(self.norm(self.conv(x)))


def _frozen_copy(bn: nn.BatchNorm2d | nn.SyncBatchNorm) -> FrozenBatchNorm2d:
    frozen = FrozenBatchNorm2d(bn.num_features, eps=bn.eps)
    reference = bn.running_mean if bn.running_mean is not None else bn.weight
    if reference is not None:
        frozen = frozen.to(device=reference.device, dtype=reference.dtype)
    with torch.no_grad():
        if bn.affine:
            frozen.weight.copy_(bn.weight)
            frozen.bias.copy_(bn.bias)
        if bn.track_running_stats:
            frozen.running_mean.copy_(bn.running_mean)
            frozen.running_var.copy_(bn.running_var)
    return frozen


def freeze_batch_norm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d / SyncBatchNorm in ``module`` by a FrozenBatchNorm2d in place.

    Affine parameters and running statistics are copied, so the frozen layer computes what the
    original computes in eval mode. Module order (hence state-dict order) is kept. Returns
    ``module``, or the frozen replacement when ``module`` itself is a batch norm.
    """
    if isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm)):
        return _frozen_copy(module)
    for name, child in module.named_children():
        replacement = freeze_batch_norm(child)
        if replacement is not child:
            setattr(module, name, replacement)
    return module


def fold_batch_norm(
    norm: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight and bias of a conv (``weight`` [O, ...], ``bias`` [O] or None) followed by
    ``norm``, as one conv: norm(conv(x)) == conv'(x). ``norm`` must normalize with running
    statistics: a BatchNorm2d / SyncBatchNorm in eval mode, or a FrozenBatchNorm2d.

    Raises:
        ValueError: a BatchNorm in training mode or without running statistics.
        TypeError: another kind of norm.
    """
    if isinstance(norm, (nn.BatchNorm2d, nn.SyncBatchNorm)) and (norm.training or not norm.track_running_stats):
        raise ValueError(
            f"cannot fold {type(norm).__name__}({norm.num_features}): it normalizes with batch statistics; "
            "call model.eval() first (or build it with running statistics)"
        )
    if not isinstance(norm, (nn.BatchNorm2d, nn.SyncBatchNorm, FrozenBatchNorm2d)):
        raise TypeError(f"cannot fold a {type(norm).__name__} into a conv; expected BatchNorm2d or FrozenBatchNorm2d")
    gain, shift, mean, var = (
        cast(torch.Tensor, t) for t in (norm.weight, norm.bias, norm.running_mean, norm.running_var)
    )
    scale = gain * torch.rsqrt(var + norm.eps)
    folded_bias = shift - mean * scale
    if bias is not None:
        folded_bias = folded_bias + bias * scale
    return weight * scale.view(-1, *([1] * (weight.dim() - 1))), folded_bias
