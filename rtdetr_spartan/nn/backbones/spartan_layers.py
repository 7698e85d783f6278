# Follows the design of SpaRTAN (henry-pay/SpaRTAN, Apache-2.0).
"""SpaRTAN's layers in their one canonical form: conv + norm + act, squeeze-excite, the spatial
and channel mixers and the residual block. State-dict names are the reference's.

This is the form that trains and evaluates, and each piece of the block's math is written here
once: the channel rotation (``rotate_pairs``; ``pair_matrix`` and ``fold_rotation`` derive the
other forms' factors from it), squeeze-excite (``SqueezeExcite``), the CMixer's per-pixel part
(``pixel_mix``) and the gated output projection (``GatedProjection``); BatchNorm folding is
``nn.common.fold_batch_norm``. The inference and ONNX forms (``spartan_inference``,
``spartan_export``) call these and differ only in what they precompute and in layout; a block
produces them with ``reparameterize()`` (``rtdetr_spartan.nn.reparameterize``). Every module
that holds parameters is called in the forward, so hooks, profilers and summaries see it.

Two choices keep the reference's math but not its ops (both exact up to float rounding):
  * the CMixer's complex channel rotation is a product of complex views of real (re, im)
    channel pairs, or folded into the grouped 3x3 conv where its groups hold whole pairs:
    parameters and module outputs stay real, so autocast needs no special case;
  * the mixers compute in channels_last memory on "token" views [B, H, W, C] (free permutes),
    and each mixer's squeeze-excite gate, the block's layer scale and its drop path are folded
    into its output projection: passes over the activations fewer.

Training cost drove the rest (``benchmarks/train_speed.py``; docs/results.md, "SpaRTAN: conversions,
training speed, compilation"): the CMixer's per-pixel part is one autograd function
(``peak_mix``) with a hand-written backward, spatial means are sums whose backward broadcasts
a view, and the projection gates whichever of weights and activations is smaller.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, cast

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from rtdetr_spartan.nn.reparameterize import ExportForm

__all__ = [
    "Block",
    "CMixer",
    "ConvNormAct",
    "DropPath",
    "GatedProjection",
    "NORM_EPS",
    "RotatedConv",
    "SMixer",
    "SqueezeExcite",
    "fold_rotation",
    "gated_projection",
    "maps",
    "pair_matrix",
    "peak_mix",
    "pixel_mix",
    "rotate_pairs",
    "spatial_mean",
    "tokens",
]

NORM_EPS = 1e-6  # the reference uses eps 1e-6 for every BatchNorm and GroupNorm
Activation = Callable[[torch.Tensor], torch.Tensor]


def tokens(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, H, W, C] (a view; contiguous when x is channels_last)."""
    return x.permute(0, 2, 3, 1)


def maps(t: torch.Tensor) -> torch.Tensor:
    """[B, H, W, C] -> [B, C, H, W] (channels_last when t is contiguous)."""
    return t.permute(0, 3, 1, 2)


# ---- the channel rotation ----------------------------------------------------------------------


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


def pair_matrix(rotation: torch.Tensor) -> torch.Tensor:
    """The rotation as real 2x2 matrices, ``rotate_pairs`` applied to unit pairs:
    R [E/2, 2, 2] with rotate_pairs(x)[2k + j] = sum_i R[k, j, i] x[2k + i]."""
    units = torch.eye(2, dtype=rotation.dtype, device=rotation.device).repeat(1, rotation.shape[0])  # [i, E]
    return rotate_pairs(units, rotation).view(2, -1, 2).permute(1, 2, 0)


def fold_rotation(weight: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Weights W' with conv(x, W') == conv(rotate_pairs(x), W) for a grouped conv whose groups
    hold whole channel pairs. weight: [O, G_in, k, k] (G_in even); rotation: [E/2, 2]."""
    out_ch, per_group, kh, kw = weight.shape
    groups = rotation.shape[0] * 2 // per_group
    r = pair_matrix(rotation).view(groups, 1, per_group // 2, 2, 2, 1, 1)  # [g, 1, pair, j, i, 1, 1]
    w = weight.view(groups, out_ch // groups, per_group // 2, 2, 1, kh, kw)  # taps reading channel j
    return (w * r).sum(3).view(out_ch, per_group, kh, kw)


# ---- squeeze-excite, the projection, the per-pixel part -----------------------------------------


def spatial_mean(t: torch.Tensor) -> torch.Tensor:
    """t: [B, H, W, C] tokens -> [B, C], the mean over H and W.

    A sum and a scale: its backward broadcasts the gradient as a view, where ``mean``'s divides
    and so writes a full-size map (one pass over the activations fewer per squeeze-excite).
    """
    return t.sum((1, 2)) * (1.0 / (t.shape[1] * t.shape[2]))


class SqueezeExcite(nn.Module):
    """The gate of squeeze-excite, sigmoid(expand(relu(squeeze(mean_hw(x))))), from the spatial
    means; the mixers fold it into their output projection. The reference's parameter names
    (``squeeze`` / ``expand``; torchvision's SqueezeExcitation names them fc1 / fc2)."""

    def __init__(self, channels: int, squeeze_channels: int) -> None:
        super().__init__()
        self.squeeze = PointwiseConv(channels, squeeze_channels)
        self.expand = PointwiseConv(squeeze_channels, channels)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """pooled: [B, C] spatial means -> gate [B, C] in (0, 1)."""
        return torch.sigmoid(self.expand(F.relu(self.squeeze(pooled))))


class PointwiseConv(nn.Conv2d):
    """A 1x1 conv (weight [out, in, 1, 1]) that also takes vectors [B, in] -> [B, out], as one
    linear layer: the same parameters and result as the conv on [B, in, 1, 1] maps, without the
    conv's unfold path for 1x1 inputs (it cost the eager inference form of SpaRTAN-T 3 % at
    640²). Maps [B, in, H, W] go through the conv."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.flatten(1), self.bias) if x.dim() == 2 else super().forward(x)


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


class GatedProjection(PointwiseConv):
    """A mixer's output 1x1 conv (weight [C, E, 1, 1], bias [C]) applied to gated tokens:
    sample_scale * layer_scale * proj(t * gate), folded into one ``gated_projection``: the
    layer scale into the weights, the per-sample drop-path factors into the gate."""

    def forward(  # type: ignore[override]
        self,
        t: torch.Tensor,
        gate: torch.Tensor,
        layer_scale: torch.Tensor | None = None,
        sample_scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """t: [B, H, W, E] tokens; gate: [B, E]; layer_scale: [1, C, 1, 1] or None;
        sample_scale: [B] or None -> [B, C, H, W] channels_last."""
        weight, bias = self.weight.flatten(1), cast(torch.Tensor, self.bias)
        if layer_scale is not None:
            scale = layer_scale.flatten()
            weight, bias = weight * scale[:, None], bias * scale
        if sample_scale is not None:
            gate, bias = gate * sample_scale[:, None], bias * sample_scale[:, None]
        return gated_projection(t, weight, bias, gate)


def pixel_mix(gelu_theta: torch.Tensor, w: torch.Tensor, gelu_theta_m: torch.Tensor, w_m: torch.Tensor) -> torch.Tensor:
    """The CMixer's per-pixel product w * gelu(theta) + w[m] * gelu(theta[m]), from gelu(theta)
    and w ([..., E]) and their values at the argmax channel m ([..., 1], broadcast)."""
    return torch.addcmul(gelu_theta_m * w_m, gelu_theta, w)


class _PeakMix(torch.autograd.Function):
    """The CMixer's per-pixel part, optionally with the rotation (``peak_mix`` gives the math).

    The backward keeps gelu(theta) (and the unrotated product) from the forward, writes the
    gradients of theta and w directly instead of autograd's zero-filled slice and gather
    gradients, and rotates by one complex product per pass.
    """

    @staticmethod
    def forward(
        ctx: Any, t: torch.Tensor, theta: torch.Tensor, w: torch.Tensor, rotation: torch.Tensor | None
    ) -> torch.Tensor:
        index = t.max(dim=-1, keepdim=True).indices  # argmax's first maximum, faster on CPU
        theta_m, w_m = theta.gather(-1, index), w.gather(-1, index)  # [B, H, W, 1]
        gelu_theta, gelu_theta_m = F.gelu(theta), F.gelu(theta_m)
        feat = pixel_mix(gelu_theta, w, gelu_theta_m, w_m)
        peak = (index, theta_m, w_m, gelu_theta_m)
        if rotation is None:
            ctx.save_for_backward(theta, w, gelu_theta, *peak, None, None)
            return feat
        ctx.save_for_backward(theta, w, gelu_theta, *peak, rotation, feat)
        return rotate_pairs(feat, rotation)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        theta, w, gelu_theta, index, theta_m, w_m, gelu_theta_m, rotation, feat = ctx.saved_tensors
        grad_rotation = None
        if rotation is not None:
            grad_pairs = _complex_pairs(grad)
            if ctx.needs_input_grad[3]:  # d rotation[k] = sum over pixels of grad_k * conj(feat_k)
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
        return None, g_theta, g_w, grad_rotation


def peak_mix(
    t: torch.Tensor, theta: torch.Tensor, w: torch.Tensor, rotation: torch.Tensor | None = None
) -> torch.Tensor:
    """The CMixer's per-pixel part: ``pixel_mix`` of theta and w at every channel and at
    m = argmax of t over channels; then, if given, ``rotate_pairs`` by ``rotation``.

    t: [B, H, W, C]; theta, w: [B, H, W, E] (the two 1x1 convs of t, E >= C); rotation:
    [E/2, 2] -> [B, H, W, E]. The argmax passes no gradient to t.
    """
    return _PeakMix.apply(t, theta, w, rotation)


# ---- layers ------------------------------------------------------------------------------------


class RotatedConv(nn.Conv2d):
    """A grouped conv whose groups hold whole channel pairs; given a rotation, it convolves the
    input with its pairs rotated, conv(rotate_pairs(x), W), as conv(x, fold_rotation(W))."""

    def forward(self, x: torch.Tensor, rotation: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, in, H, W]; rotation: [in/2, 2] or None -> [B, out, H', W']."""
        weight = self.weight if rotation is None else fold_rotation(self.weight, rotation)
        return self._conv_forward(x, weight, self.bias)


class ConvNormAct(nn.Module):
    """act(norm(conv(x))): Conv2d without bias, BatchNorm2d (eps 1e-6) or none, activation or
    none. ``rotated``: the conv is a ``RotatedConv`` (its forward takes a rotation)."""

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
        rotated: bool = False,
    ) -> None:
        super().__init__()
        conv = RotatedConv if rotated else nn.Conv2d
        self.conv = conv(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias=False)
        self.norm: nn.Module = nn.BatchNorm2d(out_channels, eps=NORM_EPS) if norm else nn.Identity()
        self.act = act

    def forward(self, x: torch.Tensor, rotation: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, in, H, W] -> [B, out, H', W']; ``rotation`` (a ``rotated`` conv only): rotate
        the input's channel pairs first."""
        x = self.norm(self.conv(x) if rotation is None else self.conv(x, rotation))
        return x if self.act is None else self.act(x)

    def reparameterize(self, export: ExportForm | None = None) -> nn.Module:
        """The inference form (``nn.reparameterize``): the norm folded into the conv."""
        from rtdetr_spartan.nn.backbones.spartan_inference import FusedConvAct

        return FusedConvAct(self)


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
        self.proj_out = GatedProjection(dim, dim)

    def forward(
        self, x: torch.Tensor, layer_scale: torch.Tensor, sample_scale: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x: [B, C, H, W] channels_last -> sample_scale [B] * layer_scale [1, C, 1, 1] * SMixer(x):
        [B, C, H, W]."""
        y = tokens(self.proj_in(x))  # [B, H, W, C/2]
        gamma = self.gamma.view(-1)
        # y + gamma (y - mean y) == (1 + gamma) y - gamma mean y: one pass
        y = maps(torch.addcmul(-gamma * spatial_mean(y)[:, None, None], y, 1.0 + gamma))
        short, long = tokens(self.h_conv(y)), tokens(self.l_conv(y))
        gate = torch.cat((self.h_attn(spatial_mean(short)), self.l_attn(spatial_mean(long))), dim=1)
        return self.proj_out(torch.cat((short, long), dim=-1), gate, layer_scale, sample_scale)


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
        # groups of even size hold whole pairs: the rotation goes into the taps
        self.rotate_taps = grouped and expand_ratio % 2 == 0
        self.conv = ConvNormAct(neck, neck, 3, padding=1, groups=dim if grouped else neck, rotated=self.rotate_taps)
        self.attn = SqueezeExcite(neck, dim // 4)
        self.proj_out = GatedProjection(neck, dim)

    def forward(
        self, x: torch.Tensor, layer_scale: torch.Tensor, sample_scale: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x: [B, C, H, W] channels_last -> sample_scale [B] * layer_scale [1, C, 1, 1] * CMixer(x):
        [B, C, H, W]."""
        theta, w = tokens(self.theta(x)), tokens(self.proj(x))  # [B, H, W, E]
        rotation = self.complex.view(-1, 2)
        if self.rotate_taps:
            feat = self.conv(maps(peak_mix(tokens(x), theta, w)), rotation)
        else:  # pairs straddle groups (depthwise or odd group size): rotate the activations
            feat = self.conv(maps(peak_mix(tokens(x), theta, w, rotation)))
        t = tokens(feat)
        return self.proj_out(t, self.attn(spatial_mean(t)), layer_scale, sample_scale)


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

    def reparameterize(self, export: ExportForm | None = None) -> nn.Module:
        """The inference form (``nn.reparameterize``; with ``export``, the ONNX export form):
        eval-mode norms folded, layer scales and squeeze-excites in the projections."""
        from rtdetr_spartan.nn.backbones.spartan_inference import InferenceBlock

        return InferenceBlock(self).reparameterize(export)
