# Follows the design of SpaRTAN (henry-pay/SpaRTAN, Apache-2.0).
"""SpaRTAN's layers in their one canonical form: conv + norm + act, squeeze-excite, the spatial
and channel mixers and the residual block. State-dict names are the reference's.

This is the form that trains and evaluates. Faster inference-only forms are made from it by
explicit conversions that return new modules: ``spartan_inference.convert_for_inference``
(norms folded, mixer weights precomputed) and ``spartan_export.convert_for_export`` (the ONNX
graph). Nothing here looks at global state.

Two choices keep the reference's math but not its ops (both exact up to float rounding):
  * the CMixer's complex channel rotation is real arithmetic on (re, im) channel pairs
    (``rotate_pairs``), or folded into the grouped 3x3 conv where its groups hold whole pairs
    (``fold_rotation``): no complex dtype, so autocast and export need no special case;
  * the mixers compute in channels_last memory on "token" views [B, H, W, C] (free permutes),
    so the 1x1 convs are matrix products, and each mixer's squeeze-excite gate and the block's
    layer scale are folded into its output projection (one pass over the activations fewer).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Block",
    "CMixer",
    "ConvNormAct",
    "DropPath",
    "conv_bias",
    "NORM_EPS",
    "SMixer",
    "SqueezeExcite",
    "fold_rotation",
    "rotate_pairs",
    "tokens",
    "maps",
    "peak_mix",
]

NORM_EPS = 1e-6  # the reference uses eps 1e-6 for every BatchNorm and GroupNorm
Activation = Callable[[torch.Tensor], torch.Tensor]


def tokens(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, H, W, C] (a view; contiguous when x is channels_last)."""
    return x.permute(0, 2, 3, 1)


def maps(t: torch.Tensor) -> torch.Tensor:
    """[B, H, W, C] -> [B, C, H, W] (channels_last when t is contiguous)."""
    return t.permute(0, 3, 1, 2)


def rotate_pairs(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Multiply the channel pairs (2k, 2k+1) of the last dim, read as complex numbers re + i im,
    by ``rotation[k]`` = (re_k, im_k), in real arithmetic.

    x: [..., E]; rotation: [E/2, 2] -> [..., E] with
    out[2k] = re_k x[2k] - im_k x[2k+1] and out[2k+1] = im_k x[2k] + re_k x[2k+1].
    """
    same, cross = _pair_factors(rotation, x.dtype)
    return torch.addcmul(x * same, _swap_pairs(x), cross)


def fold_rotation(weight: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Weights W' with conv(x, W') == conv(rotate_pairs(x), W) for a grouped conv whose groups
    hold whole channel pairs. weight: [O, G_in, k, k] (G_in even); rotation: [E/2, 2]."""
    out_ch, per_group, kh, kw = weight.shape
    groups = rotation.shape[0] * 2 // per_group
    rot = rotation.view(groups, 1, per_group // 2, 2, 1, 1)
    re, im = rot[:, :, :, :1], rot[:, :, :, 1:]
    w = weight.view(groups, out_ch // groups, per_group // 2, 2, kh, kw)
    w_re, w_im = w[:, :, :, :1], w[:, :, :, 1:]  # taps reading out[2k] and out[2k+1]
    folded = torch.cat((w_re * re + w_im * im, w_im * re - w_re * im), dim=3)
    return folded.view(out_ch, per_group, kh, kw)


def conv_bias(conv: nn.Conv2d) -> torch.Tensor:
    """The bias of a conv built with one."""
    assert conv.bias is not None
    return conv.bias


def project(t: torch.Tensor, proj: nn.Conv2d, gate: torch.Tensor, out_scale: torch.Tensor) -> torch.Tensor:
    """out_scale * proj(t * gate): a 1x1 conv after a squeeze-excite gate, both folded into one
    batched matrix product.

    t: [B, H, W, E] tokens; gate: [B, E]; out_scale: [1, C, 1, 1] -> [B, C, H, W] channels_last.
    """
    scale = out_scale.view(-1)
    weight = (proj.weight.flatten(1) * scale[:, None])[None] * gate[:, None, :]  # [B, C, E]
    h, w = t.shape[1:3]
    out = torch.baddbmm(conv_bias(proj) * scale, t.flatten(1, 2), weight.transpose(1, 2))
    return maps(out.unflatten(1, (h, w)))


def _swap_pairs(x: torch.Tensor) -> torch.Tensor:
    """x: [..., E] -> the same with the channels of each pair (2k, 2k+1) exchanged."""
    return x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)


def _pair_factors(rotation: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``rotate_pairs``' per-channel factors: (re_0, re_0, re_1, ...), (-im_0, im_0, -im_1, ...)."""
    same = rotation[:, 0].repeat_interleave(2)
    cross = torch.stack((-rotation[:, 1], rotation[:, 1]), dim=1).flatten()
    return same.to(dtype), cross.to(dtype)


class _PeakMix(torch.autograd.Function):
    """The CMixer's per-pixel part, optionally with the rotation, whose backward recomputes the
    GELUs and the unrotated product instead of keeping them (``peak_mix`` gives the math)."""

    @staticmethod
    def forward(
        ctx: Any, t: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, rotation: torch.Tensor | None
    ) -> torch.Tensor:
        both = F.linear(t, weight, bias)  # [..., 2E]: theta, then w
        e = both.shape[-1] // 2
        index = t.max(dim=-1, keepdim=True).indices  # argmax's first maximum, faster on CPU
        peak = both.gather(-1, torch.cat((index, index + e), dim=-1))  # theta[m], w[m]
        ctx.save_for_backward(t, weight, both, index, rotation)
        feat = torch.addcmul(F.gelu(peak[..., :1]) * peak[..., 1:], F.gelu(both[..., :e]), both[..., e:])
        if rotation is None:
            return feat
        same, cross = _pair_factors(rotation, feat.dtype)
        return torch.addcmul(feat * same, _swap_pairs(feat), cross)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        t, weight, both, index, rotation = ctx.saved_tensors
        e = both.shape[-1] // 2
        theta, w = both[..., :e], both[..., e:]
        grad = grad.to(both.dtype)
        gelu_theta = F.gelu(theta)
        theta_m, w_m = theta.gather(-1, index), w.gather(-1, index)
        gelu_theta_m = F.gelu(theta_m)
        grad_rotation = None
        if rotation is not None:
            same, cross = _pair_factors(rotation, grad.dtype)
            if ctx.needs_input_grad[3]:
                feat = torch.addcmul(gelu_theta_m * w_m, gelu_theta, w)
                d_same = (grad * feat).flatten(0, -2).sum(0).view(-1, 2).sum(1)  # per pair: d re
                d_cross = (grad * _swap_pairs(feat)).flatten(0, -2).sum(0).view(-1, 2)  # d (-im), d im
                grad_rotation = torch.stack((d_same, d_cross[:, 1] - d_cross[:, 0]), dim=1).to(rotation.dtype)
            grad = torch.addcmul(grad * same, _swap_pairs(grad), _swap_pairs(cross))
        g_theta = torch.ops.aten.gelu_backward(grad * w, theta)
        g_w = grad * gelu_theta
        # the peak term, equal on all channels, adds to channel m of theta and w
        total = grad.sum(-1, keepdim=True)
        g_theta.scatter_add_(-1, index, torch.ops.aten.gelu_backward(total * w_m, theta_m))
        g_w.scatter_add_(-1, index, total * gelu_theta_m)
        grad_t = grad_weight = grad_bias = None
        w_theta, w_w = weight.to(both.dtype).split(e)
        if ctx.needs_input_grad[0]:
            grad_t = (g_theta @ w_theta + g_w @ w_w).to(t.dtype)
        if ctx.needs_input_grad[1]:
            rows = t.to(both.dtype).flatten(0, -2)
            grad_weight = torch.cat((g_theta.flatten(0, -2).t() @ rows, g_w.flatten(0, -2).t() @ rows))
            grad_weight = grad_weight.to(weight.dtype)
        if ctx.needs_input_grad[2]:
            grad_bias = torch.cat((g_theta.flatten(0, -2).sum(0), g_w.flatten(0, -2).sum(0))).to(weight.dtype)
        return grad_t, grad_weight, grad_bias, grad_rotation


def peak_mix(
    t: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, rotation: torch.Tensor | None = None
) -> torch.Tensor:
    """The CMixer's per-pixel part: w * gelu(theta) + w[m] * gelu(theta[m]), where
    (theta, w) = linear(t, weight, bias) and m = argmax of t over channels; then, if given,
    ``rotate_pairs`` by ``rotation``.

    t: [B, H, W, C]; weight: [2E, C] (theta rows, then w rows); bias: [2E]; rotation: [E/2, 2]
    -> [B, H, W, E]. Its backward (``_PeakMix``) recomputes the GELUs and the unrotated product,
    and writes the gradients of theta and w without the zero-filled slice and gather gradients
    that autograd would build and add: less time and memory in training.
    """
    return _PeakMix.apply(t, weight, bias, rotation)


class ConvNormAct(nn.Module):
    """act(norm(conv(x))): Conv2d without bias, BatchNorm2d (eps 1e-6) or none, activation or none."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        norm: bool = True,
        act: Activation | None = F.gelu,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias=False)
        self.norm: nn.Module = nn.BatchNorm2d(out_channels, eps=NORM_EPS) if norm else nn.Identity()
        self.act = act

    def forward(self, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, in, H, W] -> [B, out, H', W']; ``weight`` replaces the conv weight if given."""
        conv = self.conv
        w = conv.weight if weight is None else weight
        x = self.norm(F.conv2d(x, w, None, conv.stride, conv.padding, conv.dilation, conv.groups))
        return x if self.act is None else self.act(x)


class SqueezeExcite(nn.Module):
    """x * sigmoid(expand(relu(squeeze(mean_hw(x))))), with the reference's parameter names
    (``squeeze`` / ``expand``; torchvision's SqueezeExcitation names them fc1 / fc2). The mixers
    call ``gate`` and fold it into their output projection."""

    def __init__(self, channels: int, squeeze_channels: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(channels, squeeze_channels, 1)
        self.expand = nn.Conv2d(squeeze_channels, channels, 1)

    def gate(self, pooled: torch.Tensor) -> torch.Tensor:
        """pooled: [B, C] spatial means -> gate [B, C] in (0, 1)."""
        hidden = F.relu(F.linear(pooled, self.squeeze.weight.flatten(1), self.squeeze.bias))
        return torch.sigmoid(F.linear(hidden, self.expand.weight.flatten(1), self.expand.bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C, H, W] -> [B, C, H, W]."""
        return x * self.gate(x.mean((2, 3)))[:, :, None, None]


class SMixer(nn.Module):
    """Spatial mixer on C channels, H = C/2:
    y = proj_in(x); y = y + gamma (y - mean_hw y);
    out = proj_out(cat(SE_h(h_conv(y)), SE_l(l_conv(y)))), with h_conv a 3x3 conv + BN + GELU and
    l_conv two dilated 3x3 convs (the second + BN + GELU); depthwise when ``grouped``."""

    def __init__(self, dim: int, grouped: bool) -> None:
        super().__init__()
        half = dim // 2
        groups = half if grouped else 1
        self.gamma = nn.Parameter(torch.full((1, half, 1, 1), 1e-5))
        self.proj_in = nn.Conv2d(dim, half, 1)
        self.h_conv = ConvNormAct(half, half, 3, padding=1, groups=groups)
        self.l_conv = nn.Sequential(
            ConvNormAct(half, half, 3, padding=2, dilation=2, groups=groups, norm=False, act=None),
            ConvNormAct(half, half, 3, padding=2, dilation=2, groups=groups),
        )
        self.h_attn = SqueezeExcite(half, half // 4)
        self.l_attn = SqueezeExcite(half, half // 4)
        self.proj_out = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, out_scale: torch.Tensor) -> torch.Tensor:
        """x: [B, C, H, W] channels_last -> out_scale [1, C, 1, 1] * SMixer(x): [B, C, H, W]."""
        y = F.linear(tokens(x), self.proj_in.weight.flatten(1), self.proj_in.bias)  # [B, H, W, C/2]
        gamma = self.gamma.view(-1)
        # y + gamma (y - mean y) == (1 + gamma) y - gamma mean y: one pass
        y = maps(torch.addcmul(-gamma * y.mean((1, 2), keepdim=True), y, 1.0 + gamma))
        short, long = tokens(self.h_conv(y)), tokens(self.l_conv(y))
        gate = torch.cat((self.h_attn.gate(short.mean((1, 2))), self.l_attn.gate(long.mean((1, 2)))), dim=1)
        return project(torch.cat((short, long), dim=-1), self.proj_out, gate, out_scale)


class CMixer(nn.Module):
    """Channel mixer on E = r*C channels (r = ``expand_ratio`` >= 2):

    theta = GELU(1x1(x)), w = 1x1(x), m = argmax_c x per pixel;
    feat = w * theta + w[m] * theta[m] (both [B, E, H, W]; m < C indexes the first C channels);
    channel pairs (2k, 2k+1) of feat multiplied by the learned complex number ``complex[k]``
    ([1, 1, 1, E/2, 2] as (re, im), the reference's layout);
    out = proj_out(SE(GELU(BN(conv3x3(feat))))), SE squeezing to C/4; the 3x3 conv is depthwise,
    or has C groups of r channels when ``grouped``.
    """

    def __init__(self, dim: int, expand_ratio: int, grouped: bool) -> None:
        super().__init__()
        neck = dim * expand_ratio
        self.complex = nn.Parameter(torch.randn(1, 1, 1, neck // 2, 2))
        self.theta = nn.Conv2d(dim, neck, 1)
        self.proj = nn.Conv2d(dim, neck, 1)
        self.conv = ConvNormAct(neck, neck, 3, padding=1, groups=dim if grouped else neck)
        self.attn = SqueezeExcite(neck, dim // 4)
        self.proj_out = nn.Conv2d(neck, dim, 1)

    def forward(self, x: torch.Tensor, out_scale: torch.Tensor) -> torch.Tensor:
        """x: [B, C, H, W] channels_last -> out_scale [1, C, 1, 1] * CMixer(x): [B, C, H, W]."""
        weight = torch.cat((self.theta.weight, self.proj.weight)).flatten(1)  # theta and w: one linear layer
        bias = torch.cat((conv_bias(self.theta), conv_bias(self.proj)))
        rotation = self.complex.view(-1, 2)
        conv = self.conv.conv
        if (conv.in_channels // conv.groups) % 2 == 0:  # groups hold whole pairs: rotate the taps
            feat = peak_mix(tokens(x), weight, bias)
            feat = self.conv(maps(feat), fold_rotation(conv.weight, rotation))
        else:  # pairs straddle groups (depthwise conv): rotate the activations
            feat = self.conv(maps(peak_mix(tokens(x), weight, bias, rotation)))
        t = tokens(feat)
        return project(t, self.proj_out, self.attn.gate(t.mean((1, 2))), out_scale)


class DropPath(nn.Module):
    """Stochastic depth per sample ("row" mode of torchvision's StochasticDepth): in training,
    zero a sample's branch with probability ``rate`` and scale the kept ones by 1 / (1 - rate).

    The rate is a (non-persistent) buffer, not a Python float: compiled code then serves every
    block of a shape, where a float attribute would make torch.compile recompile per block.
    """

    rate: torch.Tensor

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.register_buffer("rate", torch.tensor(float(rate)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, ...] -> the same, with dropped samples zeroed (training only)."""
        if not self.training:
            return x
        keep = 1.0 - self.rate
        mask = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device) < keep
        return x * (mask / keep).to(x.dtype)


class Block(nn.Module):
    """Pre-norm residual block on C channels (GN: GroupNorm with one group):
    x = x + DropPath(scale_1 * SMixer(GN_1(x))); x = x + DropPath(scale_2 * CMixer(GN_2(x)))."""

    compile_unit: ClassVar[bool] = True  # rtdetr_spartan.nn.compile: the repeated unit

    def __init__(self, dim: int, expand_ratio: int, grouped: bool, drop_path: float) -> None:
        super().__init__()
        self.scale_1 = nn.Parameter(torch.full((1, dim, 1, 1), 1e-5))
        self.scale_2 = nn.Parameter(torch.full((1, dim, 1, 1), 1e-5))
        self.smixer = SMixer(dim, grouped)
        self.cmixer = CMixer(dim, expand_ratio, grouped)
        self.drop_path_1 = DropPath(drop_path)
        self.drop_path_2 = DropPath(drop_path)
        self.norm_1 = nn.GroupNorm(1, dim, eps=NORM_EPS)
        self.norm_2 = nn.GroupNorm(1, dim, eps=NORM_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C, H, W] channels_last -> [B, C, H, W] channels_last."""
        x = x + self.drop_path_1(self.smixer(self.norm_1(x), self.scale_1))
        return x + self.drop_path_2(self.cmixer(self.norm_2(x), self.scale_2))
