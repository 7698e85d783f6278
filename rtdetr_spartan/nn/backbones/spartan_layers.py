# Follows the design of SpaRTAN (henry-pay/SpaRTAN, Apache-2.0).
"""SpaRTAN's layers in their one canonical form: conv + norm + act, squeeze-excite, the spatial
and channel mixers and the residual block. State-dict names are the reference's.

This is the form that trains and evaluates. Faster inference-only forms are made from it by
explicit conversions that return new modules: ``spartan_inference.convert_for_inference``
(norms folded, mixer weights precomputed) and ``spartan_export.convert_for_export`` (the ONNX
graph). Nothing here looks at global state.

Two choices keep the reference's math but not its ops (both exact up to float rounding):
  * the CMixer's complex channel rotation is a product of complex views of real (re, im)
    channel pairs (``rotate_pairs``), or folded into the grouped 3x3 conv where its groups hold
    whole pairs (``fold_rotation``): parameters and module outputs stay real, so autocast needs
    no special case (the ONNX form, ``spartan_export``, rotates in real arithmetic);
  * the mixers compute in channels_last memory on "token" views [B, H, W, C] (free permutes),
    so their 1x1 projections are matrix products, and each mixer's squeeze-excite gate, the block's
    layer scale and its drop path are folded into its output projection (``project``): passes
    over the activations fewer.

Training cost drove the rest (``benchmarks/train_speed.py``; README, "SpaRTAN: conversions,
training speed, compilation"): the CMixer's per-pixel part is one autograd function
(``peak_mix``) with a hand-written backward, spatial means are sums whose backward broadcasts
a view, and the projection gates whichever of weights and activations is smaller.
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
    "gated_projection",
    "rotate_pairs",
    "spatial_mean",
    "tokens",
    "maps",
    "peak_mix",
    "project",
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
    by ``rotation[k]`` = (re_k, im_k): one complex product per pair.

    x: [..., E]; rotation: [E/2, 2] -> [..., E] with
    out[2k] = re_k x[2k] - im_k x[2k+1] and out[2k+1] = im_k x[2k] + re_k x[2k+1].
    The arithmetic runs in float32 (float64 for float64 input) and returns x's dtype.
    """
    return _real_pairs(_complex_pairs(x) * _complex_pairs(rotation.flatten()), x.dtype)


def _complex_pairs(x: torch.Tensor) -> torch.Tensor:
    """x: [..., E] real -> [..., E/2] complex view of its channel pairs (a copy only when x is
    not contiguous or is a half type, which has no complex CPU arithmetic)."""
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    return torch.view_as_complex(x.contiguous().unflatten(-1, (-1, 2)))


def _real_pairs(z: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """z: [..., E/2] complex -> [..., E] real channel pairs (re, im) in ``dtype``."""
    return torch.view_as_real(z).flatten(-2).to(dtype)


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


def spatial_mean(t: torch.Tensor) -> torch.Tensor:
    """t: [B, H, W, C] tokens -> [B, C], the mean over H and W.

    A sum and a scale: its backward broadcasts the gradient as a view, where ``mean``'s divides
    and so writes a full-size map (one pass over the activations fewer per squeeze-excite).
    """
    return t.sum((1, 2)) * (1.0 / (t.shape[1] * t.shape[2]))


def gated_projection(t: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """A 1x1 conv after a squeeze-excite gate, proj(t * gate), as one (batched) matrix product.

    t: [B, H, W, E] tokens; weight: [C, E]; bias: [C] or [B, C]; gate: [B, E] -> [B, C, H, W]
    channels_last. The gate scales the smaller operand: the weights per sample ([B, C, E]) on
    large maps, saving a pass over the activations, and the activations on maps of fewer than
    2C pixels. (Forward and backward of the last-stage CMixer projection of the SpaRTAN-T
    classifier, 16 x 7 x 7 pixels, 512 -> 256 channels: 16 ms with per-sample weights, 4 ms
    with gated activations; of the first-stage one, 4 x 80 x 80 pixels, 128 -> 32: 7 vs 13 ms.)
    """
    b, h, w, _ = t.shape
    flat, bias = t.flatten(1, 2), bias.expand(b, -1)[:, None]  # [B, HW, E], [B, 1, C]
    if h * w < 2 * weight.shape[0]:
        out = F.linear(flat * gate[:, None], weight) + bias
    else:
        out = torch.baddbmm(bias, flat, (weight[None] * gate[:, None, :]).transpose(1, 2))
    return maps(out.unflatten(1, (h, w)))


def project(
    t: torch.Tensor,
    proj: nn.Conv2d,
    gate: torch.Tensor,
    layer_scale: torch.Tensor,
    sample_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """sample_scale * layer_scale * proj(t * gate), folded into one ``gated_projection``: the
    layer scale into the weights, the per-sample drop-path factors into the gate.

    t: [B, H, W, E] tokens; gate: [B, E]; layer_scale: [1, C, 1, 1]; sample_scale: [B] or None
    -> [B, C, H, W] channels_last.
    """
    scale = layer_scale.flatten()
    weight, bias = proj.weight.flatten(1) * scale[:, None], conv_bias(proj) * scale
    if sample_scale is not None:
        gate, bias = gate * sample_scale[:, None], bias * sample_scale[:, None]
    return gated_projection(t, weight, bias, gate)


class _PeakMix(torch.autograd.Function):
    """The CMixer's per-pixel part, optionally with the rotation (``peak_mix`` gives the math).

    theta and w come from two 1x1 convs on the channels_last map (oneDNN's kernel is faster
    than a matrix product for so few input channels) and stay separate contiguous maps
    (elementwise kernels on a strided half of one map run up to 2x slower on the CPU). The
    backward keeps gelu(theta) (and the unrotated product) from the forward, writes the
    gradients of theta and w directly instead of autograd's zero-filled slice and gather
    gradients, gets each weight and bias gradient from one matrix product, and rotates by one
    complex product per pass.
    """

    @staticmethod
    def forward(
        ctx: Any,
        t: torch.Tensor,
        theta_weight: torch.Tensor,
        theta_bias: torch.Tensor,
        w_weight: torch.Tensor,
        w_bias: torch.Tensor,
        rotation: torch.Tensor | None,
    ) -> torch.Tensor:
        x = maps(t)
        theta = tokens(F.conv2d(x, theta_weight, theta_bias))  # [B, H, W, E]
        w = tokens(F.conv2d(x, w_weight, w_bias))
        index = t.max(dim=-1, keepdim=True).indices  # argmax's first maximum, faster on CPU
        theta_m, w_m = theta.gather(-1, index), w.gather(-1, index)  # [B, H, W, 1]
        gelu_theta, gelu_theta_m = F.gelu(theta), F.gelu(theta_m)
        feat = torch.addcmul(gelu_theta_m * w_m, gelu_theta, w)
        peak = (index, theta_m, w_m, gelu_theta_m)
        if rotation is None:
            ctx.save_for_backward(t, theta_weight, w_weight, theta, w, gelu_theta, *peak, None, None)
            return feat
        ctx.save_for_backward(t, theta_weight, w_weight, theta, w, gelu_theta, *peak, rotation, feat)
        return rotate_pairs(feat, rotation)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        t, theta_weight, w_weight, theta, w, gelu_theta, index, theta_m, w_m, gelu_theta_m, rotation, feat = (
            ctx.saved_tensors
        )
        grad_rotation = None
        if rotation is not None:
            grad_pairs = _complex_pairs(grad)
            if ctx.needs_input_grad[5]:  # d rotation[k] = sum over pixels of grad_k * conj(feat_k)
                pairs = torch.linalg.vecdot(_complex_pairs(feat).flatten(0, -2), grad_pairs.flatten(0, -2), dim=0)
                grad_rotation = torch.view_as_real(pairs).to(rotation.dtype)
            grad = _real_pairs(grad_pairs * _complex_pairs(rotation.flatten()).conj(), theta.dtype)
        else:
            grad = grad.to(theta.dtype)
        g_theta = torch.ops.aten.gelu_backward(grad * w, theta)
        g_w = grad * gelu_theta
        # the peak term, equal on all channels, adds to channel m of theta and w
        total = grad.sum(-1, keepdim=True)
        g_theta.scatter_add_(-1, index, torch.ops.aten.gelu_backward(total * w_m, theta_m))
        g_w.scatter_add_(-1, index, total * gelu_theta_m)
        g_theta, g_w = g_theta.flatten(0, -2), g_w.flatten(0, -2)  # [N, E]
        grad_t = None
        if ctx.needs_input_grad[0]:
            mix_theta, mix_w = theta_weight.flatten(1).to(theta.dtype), w_weight.flatten(1).to(theta.dtype)
            grad_t = torch.addmm(g_theta @ mix_theta, g_w, mix_w).view(t.shape).to(t.dtype)
        grads: list[torch.Tensor | None] = [None] * 4  # theta weight and bias, w weight and bias
        if any(ctx.needs_input_grad[1:5]):
            rows = t.to(theta.dtype).flatten(0, -2)
            rows = torch.cat((rows, rows.new_ones(rows.shape[0], 1)), dim=1)  # the ones column gives d bias
            for i, (g, weight) in enumerate(((g_theta, theta_weight), (g_w, w_weight))):
                both = (g.t() @ rows).to(weight.dtype)  # [E, C + 1]
                grads[2 * i], grads[2 * i + 1] = both[:, :-1].reshape(weight.shape), both[:, -1]
        return grad_t, *grads, grad_rotation


def peak_mix(
    t: torch.Tensor,
    theta_weight: torch.Tensor,
    theta_bias: torch.Tensor,
    w_weight: torch.Tensor,
    w_bias: torch.Tensor,
    rotation: torch.Tensor | None = None,
) -> torch.Tensor:
    """The CMixer's per-pixel part: w * gelu(theta) + w[m] * gelu(theta[m]), where theta and w
    are 1x1 convs of t and m = argmax of t over channels; then, if given, ``rotate_pairs`` by
    ``rotation``.

    t: [B, H, W, C]; theta_weight, w_weight: [E, C, 1, 1]; theta_bias, w_bias: [E];
    rotation: [E/2, 2] -> [B, H, W, E]. Its backward (``_PeakMix``) keeps gelu(theta) (and the unrotated product)
    from the forward and writes the gradients of theta and w without the zero-filled slice and
    gather gradients that autograd would build and add.
    """
    return _PeakMix.apply(t, theta_weight, theta_bias, w_weight, w_bias, rotation)


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

    def forward(
        self, x: torch.Tensor, layer_scale: torch.Tensor, sample_scale: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x: [B, C, H, W] channels_last -> sample_scale [B] * layer_scale [1, C, 1, 1] * SMixer(x):
        [B, C, H, W]."""
        y = F.linear(tokens(x), self.proj_in.weight.flatten(1), self.proj_in.bias)  # [B, H, W, C/2]
        gamma = self.gamma.view(-1)
        # y + gamma (y - mean y) == (1 + gamma) y - gamma mean y: one pass
        y = maps(torch.addcmul(-gamma * spatial_mean(y)[:, None, None], y, 1.0 + gamma))
        short, long = tokens(self.h_conv(y)), tokens(self.l_conv(y))
        gate = torch.cat((self.h_attn.gate(spatial_mean(short)), self.l_attn.gate(spatial_mean(long))), dim=1)
        return project(torch.cat((short, long), dim=-1), self.proj_out, gate, layer_scale, sample_scale)


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

    def forward(
        self, x: torch.Tensor, layer_scale: torch.Tensor, sample_scale: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x: [B, C, H, W] channels_last -> sample_scale [B] * layer_scale [1, C, 1, 1] * CMixer(x):
        [B, C, H, W]."""
        mix = (self.theta.weight, conv_bias(self.theta), self.proj.weight, conv_bias(self.proj))
        rotation = self.complex.view(-1, 2)
        conv = self.conv.conv
        if (conv.in_channels // conv.groups) % 2 == 0:  # groups hold whole pairs: rotate the taps
            feat = self.conv(maps(peak_mix(tokens(x), *mix)), fold_rotation(conv.weight, rotation))
        else:  # pairs straddle groups (depthwise conv): rotate the activations
            feat = self.conv(maps(peak_mix(tokens(x), *mix, rotation)))
        t = tokens(feat)
        return project(t, self.proj_out, self.attn.gate(spatial_mean(t)), layer_scale, sample_scale)


class DropPath(nn.Module):
    """Stochastic depth per sample ("row" mode of torchvision's StochasticDepth): in training,
    zero a sample's branch with probability ``rate`` and scale the kept ones by 1 / (1 - rate).

    It has no ``forward``: blocks pass ``factors`` to their mixers, which fold them into their
    output projection, so the drop costs no pass over the activations.
    The rate is a (non-persistent) buffer, not a Python float: compiled code then serves every
    block of a shape, where a float attribute would make torch.compile recompile per block.
    """

    rate: torch.Tensor

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.register_buffer("rate", torch.tensor(float(rate)), persistent=False)

    def factors(self, batch: int, like: torch.Tensor) -> torch.Tensor | None:
        """In training [batch]: 0 for a dropped sample, 1 / (1 - rate) for a kept one; None in eval."""
        if not self.training:
            return None
        keep = 1.0 - self.rate
        mask = torch.rand(batch, dtype=like.dtype, device=like.device) < keep
        return (mask / keep).to(like.dtype)


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
        batch = x.shape[0]
        x = x + self.smixer(self.norm_1(x), self.scale_1, self.drop_path_1.factors(batch, x))
        return x + self.cmixer(self.norm_2(x), self.scale_2, self.drop_path_2.factors(batch, x))
