# Follows the design of SpaRTAN (henry-pay/SpaRTAN, Apache-2.0).
"""SpaRTAN building blocks: conv + norm + act, squeeze-excite, the spatial and channel mixers
and the residual block. State-dict names follow the reference (see ``spartan.py``).

The CMixer's complex channel rotation is written in real arithmetic on (re, im) channel pairs:
no complex dtype appears in ``forward``, so the model exports to ONNX and runs under autocast
like any CNN.

CPU speed notes (eager PyTorch, all exact up to float rounding):
  * the network runs channels_last: oneDNN's depthwise/grouped convs are ~10x faster there
    than in NCHW, and the mixers' 1x1 convs become matmuls on free [B, H, W, C] views;
  * a BatchNorm with running statistics is folded into its conv on the fly;
  * the squeeze-excite gate and the block's layer scale are folded into the output projection;
  * the rotation is folded into the grouped 3x3 conv where groups hold whole pairs, and is
    two contiguous ops in a "planar" channel order before a depthwise conv;
  * in inference the big early-stage CMixer maps are processed in row tiles, so temporaries
    stay in cache and the allocator does not return and re-fault memory on every block.
Op count (what limits a GPU at small batches, where every op is a kernel launch): theta and proj
are one linear layer, the SMixer's two squeeze-excites one block-diagonal pair of layers, and a
deployed block (``Block.convert_to_deploy``) computes its weights in that form once, not per call:
about 45 ops per block instead of 90.

ONNX export traces a different, equally exact formulation (``forward_nchw``, and the block's
export branch): plain NCHW maps, and in the CMixer the real and imaginary channels as separate
maps, so that the large tensors flow between convs and same-shape elementwise ops only. The
reason is onnxruntime's CPU layout: it runs convs in a blocked channel layout and converts
to and from plain NCHW around every op outside a short list (channel splits, gathers, broadcast
products, Transpose, GroupNorm...). The token views above would become a ``Transpose`` pair
around every mixer. Other choices made for it:
  * the argmax channel's theta / proj values are gathered from the first channel spans of the
    half maps instead of from extra C-channel convs (1 GMAC fewer at 640 px);
  * norm_1's affine transform is folded into the SMixer's input projection, each residual add
    into the last conv of its mixer, and GroupNorm is an instance norm of a 5-D view (every shape
    stays inferable, which onnxruntime's fusions need when the batch axis is dynamic);
  * squeeze-excite runs as 1x1 convs on pooled maps; in a fixed-shape export
    (``rtdetr_spartan.nn.common.fixed_shape_export``, which ``export_onnx`` uses without dynamic
    axes) its gates and the SMixer's centre-boost shift are resized to full maps, so that the
    products stay in the blocked layout.
On RT-DETR-SpaRTAN-T at 640 px, one thread, the fixed-shape form runs in about 0.6x the time of
a trace of the eager code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple, TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FrozenBatchNorm2d, StochasticDepth

from rtdetr_spartan.nn.common import exporting_fixed_shapes

__all__ = [
    "Block",
    "CMixer",
    "CMixerWeights",
    "ConvNormAct",
    "SMixer",
    "SMixerWeights",
    "SqueezeExcite",
    "fold_rotation",
    "pair_factors",
    "planar_factors",
    "planar_order",
    "rotate_pairs",
    "rotate_planar",
]

NORM_EPS = 1e-6  # the reference uses eps 1e-6 for every BatchNorm and GroupNorm
# onnxruntime's blocked ("NCHWc") conv layout holds 8 (AVX2) or 16 (AVX-512) channels per block;
# convs whose channel counts are not multiples of it fall back to plain NCHW.
LAYOUT_BLOCK = 16
# CPU inference (no autograd) splits a CMixer's E-channel map of at least TILE_MIN_COUNT *
# TILE_ELEMENTS elements into row tiles of about TILE_ELEMENTS (fp32: 1 MiB per temporary, which
# stays in L2) and at least TILE_MIN_ROWS rows (each tile recomputes a halo row on either side).
TILE_ELEMENTS = 1 << 18
TILE_MIN_ROWS = 8
TILE_MIN_COUNT = 4

_Nested = TypeVar("_Nested")


def pair_factors(rotation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``rotate_pairs``'s per-channel factors of ``rotation`` [E/2, 2]: (re_0, re_0, re_1, ...)
    and (-im_0, im_0, -im_1, ...), each [E]."""
    same = rotation[:, 0].repeat_interleave(2)
    cross = (rotation[:, 1:2] * rotation.new_tensor([-1.0, 1.0])).flatten()
    return same, cross


def rotate_pairs(
    x: torch.Tensor, rotation: torch.Tensor, factors: tuple[torch.Tensor, torch.Tensor] | None = None
) -> torch.Tensor:
    """Multiply the channel pairs (2k, 2k+1) of the last dim, read as complex numbers re + i im,
    by ``rotation[k]`` = (re_k, im_k), in real arithmetic.

    x: [..., E]; rotation: [E/2, 2] -> [..., E] with
    out[2k] = re_k x[2k] - im_k x[2k+1] and out[2k+1] = im_k x[2k] + re_k x[2k+1].
    ``factors``: ``pair_factors(rotation)`` computed beforehand.
    """
    same, cross = pair_factors(rotation) if factors is None else factors
    e = x.shape[-1]
    swapped = x.unflatten(-1, (e // 2, 2)).flip(-1).flatten(-2)
    return torch.addcmul(x * same, swapped, cross)


def planar_order(channels: int) -> torch.Tensor:
    """Channel order with the pairs' first members (real parts) first: 0, 2, 4, ..., 1, 3, ..."""
    return torch.cat((torch.arange(0, channels, 2), torch.arange(1, channels, 2)))


def planar_factors(rotation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``rotate_planar``'s factors of ``rotation`` [E/2, 2]: [[re], [im]] and [[-im], [re]],
    each [2, E/2]."""
    re, im = rotation[:, 0], rotation[:, 1]
    return torch.stack((re, im)), torch.stack((-im, re))


def rotate_planar(
    x: torch.Tensor, rotation: torch.Tensor, factors: tuple[torch.Tensor, torch.Tensor] | None = None
) -> torch.Tensor:
    """``rotate_pairs`` for channels in ``planar_order``: x[..., :E/2] holds the real parts,
    x[..., E/2:] the imaginary parts. x: [..., E] -> [..., E] in the same order.
    ``factors``: ``planar_factors(rotation)`` computed beforehand.

    Unlike the interleaved form this needs no channel swap: two contiguous broadcast ops.
    """
    from_re, from_im = planar_factors(rotation) if factors is None else factors
    parts = x.unflatten(-1, (2, x.shape[-1] // 2))  # [..., 2, E/2]
    return torch.addcmul(parts[..., :1, :] * from_re, parts[..., 1:, :], from_im).flatten(-2)


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


# The mixers work on "token" views [B, H, W, C] of channels_last maps (free permutes), so the
# 1x1 convs are plain matrix products and every elementwise op runs on contiguous memory.
def _tokens(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, H, W, C] (a view when x is channels_last)."""
    return x.permute(0, 2, 3, 1)


def _maps(t: torch.Tensor) -> torch.Tensor:
    """[B, H, W, C] -> [B, C, H, W] (channels_last when t is contiguous)."""
    return t.permute(0, 3, 1, 2)


def _projection(
    proj: nn.Conv2d, out_scale: torch.Tensor | None, order: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A 1x1 conv as a linear layer: weight [C_out, E] with input channels in ``order`` (None:
    natural) and bias [C_out], both multiplied by ``out_scale`` [1, C_out, 1, 1] if given."""
    weight, bias = proj.weight.flatten(1), proj.bias
    if order is not None:
        weight = weight.index_select(1, order)
    if out_scale is not None:
        weight = weight * out_scale.view(-1, 1)
        bias = bias * out_scale.view(-1)
    return weight, bias


def _gated(weight: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """weight [C_out, E] times the per-sample squeeze-excite gate [B, E] -> [B, C_out, E]: the
    gate folded into the projection, which saves a pass over the (largest) activations."""
    return weight[None] * gate[:, None, :]


def _project(tokens: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """tokens: [B, H, W, E]; weight: [B, C_out, E] (``_gated``); bias: [C_out] ->
    [B, C_out, H, W] (channels_last)."""
    h, w = tokens.shape[1:3]
    out = torch.baddbmm(bias, tokens.flatten(1, 2), weight.transpose(1, 2))
    return _maps(out.unflatten(1, (h, w)))


class _GateWeights(NamedTuple):
    """Squeeze-excite as two linear layers: gate = sigmoid(w2 relu(w1 pooled + b1) + b2)."""

    w1: torch.Tensor  # [S, E]
    b1: torch.Tensor  # [S]
    w2: torch.Tensor  # [E, S]
    b2: torch.Tensor  # [E]

    def __call__(self, pooled: torch.Tensor) -> torch.Tensor:
        """pooled: [B, E] spatial means -> gate [B, E]."""
        return torch.sigmoid(F.linear(F.relu(F.linear(pooled, self.w1, self.b1)), self.w2, self.b2))


def _channels(parts: Sequence[torch.Tensor]) -> list[int]:
    """Channel counts as Python ints: traced sizes would become shape computations in a graph
    with dynamic axes, which hide the weights' shapes from onnxruntime's layout fusions."""
    return [int(part.shape[1]) for part in parts]


def _gates(parts: Sequence[torch.Tensor], se: SqueezeExcite, order: torch.Tensor | None = None) -> list[torch.Tensor]:
    """The squeeze-excite gate of cat(parts) (channels in ``order``), one factor per part:
    [B, E_i, 1, 1], or, in an ONNX export with fixed shapes, [B, E_i, H, W] like the part.

    Written for onnxruntime's blocked conv layout: global average pools, the two linear layers
    as 1x1 convs on the pooled maps (hidden width padded with zero channels to a multiple of
    LAYOUT_BLOCK) and, with fixed shapes, a nearest-neighbour resize of each factor to its part's
    size, so that the product is an elementwise op on two equal shapes. All of it then stays in
    the blocked layout; a broadcast product converts the part to plain NCHW and back.
    """
    w_sq, b_sq, w_ex, b_ex = se.squeeze.weight, se.squeeze.bias, se.expand.weight, se.expand.bias
    if order is not None:
        w_sq, w_ex, b_ex = w_sq.index_select(1, order), w_ex.index_select(0, order), b_ex.index_select(0, order)
    pad = -w_sq.shape[0] % LAYOUT_BLOCK  # zero channels: relu(0) = 0, no weight
    if pad:  # (concatenated zeros: a traced F.pad hides the conv weight's shape from the exporter)
        w_sq = torch.cat((w_sq, w_sq.new_zeros(pad, *w_sq.shape[1:])))
        b_sq = torch.cat((b_sq, b_sq.new_zeros(pad)))
        w_ex = torch.cat((w_ex, w_ex.new_zeros(w_ex.shape[0], pad, 1, 1)), dim=1)
    sizes = _channels(parts)
    pooled = [F.adaptive_avg_pool2d(part, 1) for part in parts]
    hidden = F.relu(_conv_sum(pooled, w_sq.split(sizes, 1), b_sq))
    gates = [
        torch.sigmoid(F.conv2d(hidden, weight, bias)) for weight, bias in zip(w_ex.split(sizes), b_ex.split(sizes))
    ]
    return [_expand_like(gate, part) for gate, part in zip(gates, parts)]


def _expand_like(factor: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """factor [B, C, 1, 1] for an elementwise op with maps [B, C, H, W]: as it is (broadcast),
    or, in an ONNX export with fixed shapes, resized to H x W (nearest neighbour), which keeps
    the op in onnxruntime's blocked layout."""
    if not exporting_fixed_shapes():
        return factor
    return F.interpolate(factor, scale_factor=(float(maps.shape[2]), float(maps.shape[3])), mode="nearest")


def _project_maps(
    parts: Sequence[torch.Tensor],
    gates: Sequence[torch.Tensor],
    proj: nn.Conv2d,
    out_scale: torch.Tensor | None,
    order: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """``_project`` on NCHW maps: residual + out_scale * proj(cat(parts * gates)), with
    ``out_scale`` and ``order`` in the 1x1 conv weights and one conv per part (``_conv_sum``).
    parts: [B, E_i, H, W] with sum E_i = E; gates: from ``_gates`` -> [B, C_out, H, W]."""
    weight, bias = proj.weight, proj.bias
    if order is not None:
        weight = weight.index_select(1, order)
    if out_scale is not None:
        weight = weight * out_scale.view(-1, 1, 1, 1)
        bias = bias * out_scale.view(-1)
    gated = [part * gate for part, gate in zip(parts, gates)]
    return _conv_sum(gated, weight.split(_channels(parts), 1), bias, residual)


def _conv_sum(
    inputs: Sequence[torch.Tensor],
    weights: Sequence[torch.Tensor],
    bias: torch.Tensor | None,
    start: torch.Tensor | None = None,
) -> torch.Tensor:
    """start + sum_i conv1x1(inputs[i], weights[i]) + bias: a 1x1 conv of the concatenated
    inputs without the concatenated copy. Every add has a conv output as an operand, which
    onnxruntime fuses into that conv."""
    out = start
    for index, (x, weight) in enumerate(zip(inputs, weights)):
        term = F.conv2d(x, weight, bias if index == 0 else None)
        out = term if out is None else out + term
    assert out is not None
    return out


def _inference_affine(norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(scale, bias) of a batch norm that normalizes with running statistics, else None."""
    if isinstance(norm, FrozenBatchNorm2d) or (
        isinstance(norm, (nn.BatchNorm2d, nn.SyncBatchNorm)) and not norm.training and norm.track_running_stats
    ):
        scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
        return scale, norm.bias - norm.running_mean * scale
    return None


class ConvNormAct(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d (eps 1e-6) or nothing -> activation or nothing.

    A BatchNorm that normalizes with running statistics (eval mode, or frozen) is folded into
    the conv on the fly, saving a pass over the output; ``fuse_norm`` folds it for good.
    """

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
        act: Callable[[torch.Tensor], torch.Tensor] | None = F.gelu,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias=False)
        self.norm = nn.BatchNorm2d(out_channels, eps=NORM_EPS) if norm else nn.Identity()
        self.act = act

    def uses_batch_statistics(self) -> bool:
        return _inference_affine(self.norm) is None and not isinstance(self.norm, nn.Identity)

    def folded(
        self, weight: torch.Tensor | None = None, order: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Conv weight and bias with the norm folded in (requires no batch statistics).

        weight: replaces the conv weight. order: channel order of a depthwise conv's input and
        output (its channels become the module's channels ``order``).
        """
        conv = self.conv
        weight, bias = (conv.weight if weight is None else weight), conv.bias
        affine = _inference_affine(self.norm)
        if affine is None and not isinstance(self.norm, nn.Identity):
            raise RuntimeError("cannot fold a BatchNorm that normalizes with batch statistics")
        if affine is not None:
            scale, shift = affine
            weight = weight * scale.view(-1, 1, 1, 1)
            bias = shift if bias is None else shift + bias * scale
        if order is not None:
            if conv.groups != conv.in_channels:
                raise RuntimeError("a channel order needs a depthwise conv")
            weight, bias = weight.index_select(0, order), (None if bias is None else bias.index_select(0, order))
        return weight, bias

    def forward(
        self, x: torch.Tensor, weight: torch.Tensor | None = None, order: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x: [B, in, H, W] -> [B, out, H', W']; ``weight`` and ``order`` as in ``folded``."""
        conv = self.conv
        if self.uses_batch_statistics():
            if order is not None:
                raise RuntimeError("a channel order needs a norm without batch statistics")
            x = (
                conv(x)
                if weight is None
                else F.conv2d(x, weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
            )
            x = self.norm(x)
        else:
            weight, bias = self.folded(weight, order)
            x = F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
        return x if self.act is None else self.act(x)

    @torch.no_grad()
    def fuse_norm(self) -> None:
        """Fold the BatchNorm (eval-mode statistics) into the conv weights and bias for good."""
        if isinstance(self.norm, nn.Identity):
            return
        conv = self.conv
        weight, bias = self.folded()
        fused = nn.Conv2d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            bias=True,
        ).to(conv.weight)
        fused.weight.copy_(weight)
        fused.bias.copy_(bias)
        self.conv, self.norm = fused, nn.Identity()


class SqueezeExcite(nn.Module):
    """x * sigmoid(expand(relu(squeeze(mean_hw(x))))).

    Written out instead of torchvision's SqueezeExcitation to keep the reference's parameter
    names (``squeeze`` / ``expand``, not ``fc1`` / ``fc2``). The mixers use ``gate`` and fold
    it into their output projection.
    """

    def __init__(self, channels: int, squeeze_channels: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(channels, squeeze_channels, 1)
        self.expand = nn.Conv2d(squeeze_channels, channels, 1)

    def weights(self, order: torch.Tensor | None = None) -> _GateWeights:
        """The two layers as linear weights, channels in ``order`` (None: natural)."""
        w1, w2, b2 = self.squeeze.weight.flatten(1), self.expand.weight.flatten(1), self.expand.bias
        if order is not None:
            w1, w2, b2 = w1.index_select(1, order), w2.index_select(0, order), b2.index_select(0, order)
        return _GateWeights(w1, self.squeeze.bias, w2, b2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C, H, W] -> [B, C, H, W]."""
        return x * self.weights()(x.mean((2, 3)))[:, :, None, None]


class SMixerWeights(NamedTuple):
    """An SMixer's parameters as its eager forward uses them (``SMixer.weights``)."""

    proj_in: torch.Tensor  # [C, C/2]: the input 1x1 conv, transposed
    proj_in_bias: torch.Tensor  # [C/2]
    one_plus_gamma: torch.Tensor  # [C/2]
    neg_gamma: torch.Tensor  # [C/2]
    gate: _GateWeights  # both squeeze-excites as one, block-diagonal (C/4 -> C)
    proj_out: torch.Tensor  # [C, C], out_scale folded in
    proj_out_bias: torch.Tensor  # [C]


class SMixer(nn.Module):
    """Spatial mixer: 1x1 to C/2, centre boost x + gamma (x - mean_hw x), a short branch (3x3)
    and a long branch (two dilated 3x3), each gated by squeeze-excite, concatenated and
    projected back to C. ``grouped``: depthwise 3x3 convs (the reference's later stages)."""

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

    def weights(self, out_scale: torch.Tensor | None = None) -> SMixerWeights:
        """The forward's parameters in the form it uses (``out_scale`` as in ``forward``)."""
        hi, lo = self.h_attn, self.l_attn
        gate = _GateWeights(
            torch.block_diag(hi.squeeze.weight.flatten(1), lo.squeeze.weight.flatten(1)),
            torch.cat((hi.squeeze.bias, lo.squeeze.bias)),
            torch.block_diag(hi.expand.weight.flatten(1), lo.expand.weight.flatten(1)),
            torch.cat((hi.expand.bias, lo.expand.bias)),
        )
        gamma = self.gamma.view(-1)
        return SMixerWeights(
            self.proj_in.weight.flatten(1).t(),
            self.proj_in.bias,
            1.0 + gamma,
            -gamma,
            gate,
            *_projection(self.proj_out, out_scale),
        )

    def forward(
        self, x: torch.Tensor, out_scale: torch.Tensor | None = None, weights: SMixerWeights | None = None
    ) -> torch.Tensor:
        """x: [B, C, H, W] -> [B, C, H, W], multiplied by ``out_scale`` [1, C, 1, 1] if given.
        ``weights``: ``self.weights(out_scale)`` computed beforehand (a deployed block's cache)."""
        if torch.onnx.is_in_onnx_export():
            return self.forward_nchw(x, out_scale)
        w = self.weights(out_scale) if weights is None else weights
        y = _tokens(x) @ w.proj_in  # bias enters below
        # y + b + gamma (y + b - mean(y + b)) == (1 + gamma) y + (b - gamma mean(y)): one pass
        shift = torch.addcmul(w.proj_in_bias, y.mean((1, 2), keepdim=True), w.neg_gamma)
        y = _maps(torch.addcmul(shift, y, w.one_plus_gamma))
        both = torch.cat((_tokens(self.h_conv(y)), _tokens(self.l_conv(y))), dim=-1)
        return _project(both, _gated(w.proj_out, w.gate(both.mean((1, 2)))), w.proj_out_bias)

    def forward_nchw(
        self,
        x: torch.Tensor,
        out_scale: torch.Tensor | None = None,
        norm: nn.GroupNorm | None = None,
        residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``forward`` in plain NCHW ops (what ONNX export traces); same arguments and result,
        plus ``residual`` if given. ``norm``: a GroupNorm whose affine transform x has not had
        yet (folded into proj_in). The centre boost's mean is a global average pool, expanded
        like the squeeze-excite gates (``_expand_like``).
        """
        weight, bias = self.proj_in.weight, self.proj_in.bias
        if norm is not None:
            bias = bias + weight.flatten(1) @ norm.bias
            weight = weight * norm.weight.view(1, -1, 1, 1)
        y = F.conv2d(x, weight, bias)
        y = y * (1.0 + self.gamma) + _expand_like(-self.gamma * F.adaptive_avg_pool2d(y, 1), y)
        short, long = self.h_conv(y), self.l_conv(y)
        gates = _gates([short], self.h_attn) + _gates([long], self.l_attn)
        return _project_maps([short, long], gates, self.proj_out, out_scale, residual=residual)


class _ConvPlan(NamedTuple):
    """The CMixer's 3x3 conv for inference: norm folded in, channels in ``order``."""

    order: torch.Tensor | None  # channel order between the two 1x1 convs (None: natural)
    rotation: torch.Tensor | None  # still to apply to the activations (None: in the weights)
    weight: torch.Tensor
    bias: torch.Tensor | None
    groups: int
    crossed: torch.Tensor | None = None  # second depthwise weight, its output halves swapped
    factors: tuple[torch.Tensor, torch.Tensor] | None = None  # rotation factors (None: from rotation)

    def rotate(self, feat: torch.Tensor) -> torch.Tensor:
        """feat: tokens [B, H, W, E] -> the same."""
        # The reference rotates in float32 even under autocast; the real form keeps the
        # activations' dtype, so autocast and ONNX export need no special case.
        if self.rotation is None:
            return feat
        planar = self.order is not None
        factors = self.factors or (planar_factors if planar else pair_factors)(self.rotation)
        factors = (factors[0].to(feat.dtype), factors[1].to(feat.dtype))
        return (rotate_planar if planar else rotate_pairs)(feat, self.rotation, factors)

    def swapped_taps(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Depthwise weights (direct, crossed), each [E, 1, 3, 3] in planar order, with
        conv(rotate(maps)) == dw(maps, direct) + dw(swap(maps), crossed) + bias, where swap
        exchanges the real and imaginary halves. Planar plans only."""
        direct, crossed = self.weight, self.crossed
        if self.rotation is not None:  # depthwise conv after the rotation
            rotation = self.rotation.to(direct.dtype)
            re, im = rotation[:, 0].repeat(2), rotation[:, 1]
            return direct * re.view(-1, 1, 1, 1), direct * torch.cat((-im, im)).view(-1, 1, 1, 1)
        assert crossed is not None
        return direct, torch.cat(crossed.chunk(2)[::-1])  # taps whose output halves were swapped

    def conv(self, maps: torch.Tensor) -> torch.Tensor:
        """maps: [B, E, H, W] -> [B, E, H, W] (3x3, padding 1, like the CMixer's conv)."""
        out = F.conv2d(maps, self.weight, self.bias, padding=1, groups=self.groups)
        if self.crossed is not None:
            crossed = F.conv2d(maps, self.crossed, None, padding=1, groups=self.groups)
            out = out + crossed.roll(out.shape[1] // 2, 1)
        return out


class CMixerWeights(NamedTuple):
    """A CMixer's parameters as its eager inference forward uses them (``CMixer.weights``)."""

    mix: torch.Tensor  # [2E, C]: theta and proj rows, outputs in plan.order
    mix_bias: torch.Tensor  # [2E]
    peak_index: torch.Tensor  # [C, 2]: where input channel c's theta and proj outputs are
    plan: _ConvPlan
    gate: _GateWeights  # in plan.order
    proj_out: torch.Tensor  # [C, E], input channels in plan.order, out_scale folded in
    proj_out_bias: torch.Tensor  # [C]


class CMixer(nn.Module):
    """Channel mixer on E = r*C channels.

    feat = w * theta + w[m] * theta[m], theta = GELU(1x1(x)), w = 1x1(x), m = argmax_c x per
    pixel; channel pairs rotated by the learned complex vector ``complex`` ([1, 1, 1, E/2, 2] as
    (re, im), the reference's layout); 3x3 conv + BN + GELU (depthwise, or C groups when
    ``grouped``), squeeze-excite to C/4 and 1x1 back to C.

    Where the rotation goes (all equal to the reference up to float rounding):
      * BN with batch statistics (training): on the activations, or folded into the conv
        weights when the conv groups hold whole (re, im) pairs;
      * otherwise (inference, frozen BN) the E channels between the 1x1 convs live in
        ``planar_order``, where the rotation is two contiguous ops before a depthwise conv; a
        conv with one pair per group takes the rotation into its weights and runs as two
        depthwise convs (oneDNN's 2-channel grouped conv is about twice as slow).
    CPU inference without autograd processes large maps in row tiles (``_forward_inference``).
    """

    def __init__(self, dim: int, expand_ratio: int, grouped: bool) -> None:
        super().__init__()
        if expand_ratio < 2:
            raise ValueError(f"CMixer expand_ratio must be >= 2, got {expand_ratio}")
        neck = dim * expand_ratio
        self.complex = nn.Parameter(torch.randn(1, 1, 1, neck // 2, 2))
        self.theta = nn.Conv2d(dim, neck, 1)
        self.proj = nn.Conv2d(dim, neck, 1)
        self.conv = ConvNormAct(neck, neck, 3, padding=1, groups=dim if grouped else neck)
        self.attn = SqueezeExcite(neck, dim // 4)
        self.proj_out = nn.Conv2d(neck, dim, 1)
        self.register_buffer("_planar", planar_order(neck), persistent=False)

    def forward(
        self, x: torch.Tensor, out_scale: torch.Tensor | None = None, weights: CMixerWeights | None = None
    ) -> torch.Tensor:
        """x: [B, C, H, W] -> [B, C, H, W], multiplied by ``out_scale`` [1, C, 1, 1] if given.
        ``weights``: ``self.weights(out_scale)`` computed beforehand (a deployed block's cache)."""
        if self.conv.uses_batch_statistics():
            return self._forward_batch_statistics(x, out_scale)
        if torch.onnx.is_in_onnx_export():
            return self.forward_nchw(x, out_scale)
        weights = self.weights(out_scale) if weights is None else weights
        return self._forward_inference(x, weights, self._tile_rows(x))

    def forward_nchw(
        self, x: torch.Tensor, out_scale: torch.Tensor | None = None, residual: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The inference ``forward`` in plain NCHW ops (what ONNX export traces), plus
        ``residual`` if given. Needs a BatchNorm without batch statistics (eval mode or frozen).

        With a planar conv plan (SpaRTAN's convs: depthwise, or one channel pair per group) the
        real and imaginary channels are separate maps from start to end (``_forward_halves``);
        otherwise the natural channel order is kept (``_forward_natural``).
        """
        if self.conv.uses_batch_statistics():
            raise RuntimeError("CMixer.forward_nchw needs eval mode or a frozen BatchNorm")
        plan = self._conv_plan()
        if plan.order is None:
            return self._forward_natural(x, out_scale, plan, residual)
        return self._forward_halves(x, out_scale, plan, residual)

    def _forward_natural(
        self, x: torch.Tensor, out_scale: torch.Tensor | None, plan: _ConvPlan, residual: torch.Tensor | None
    ) -> torch.Tensor:
        """NCHW forward in the natural channel order: 1x1 convs, argmax and gathers on dim 1,
        rotation as a broadcast, then the plan's conv."""
        theta = self.theta(x)  # [B, E, H, W]
        weight = self.proj(x)
        index = x.argmax(dim=1, keepdim=True)  # [B, 1, H, W]
        peak = F.gelu(theta.gather(1, index)) * weight.gather(1, index)
        feat = _maps(plan.rotate(_tokens(F.gelu(theta) * weight + peak)))
        feat = self.conv.act(plan.conv(feat))
        return _project_maps([feat], _gates([feat], self.attn), self.proj_out, out_scale, residual=residual)

    def _forward_halves(
        self, x: torch.Tensor, out_scale: torch.Tensor | None, plan: _ConvPlan, residual: torch.Tensor | None
    ) -> torch.Tensor:
        """NCHW forward on separate real / imaginary half maps (planar plans).

        Every large tensor is then produced and consumed by convs or same-shape elementwise
        ops, which onnxruntime keeps in its blocked conv layout (a channel split, concat or
        gather would need layout conversions around it):
          * each half is computed in two channel spans, its first C/2 channels (the theta /
            proj channels below C, which the argmax can pick) and the rest, each by its own
            1x1 convs; the argmax channel's product ("peak", [B, 1, H, W]) is gathered from
            the first spans. Being equal on all channels, the peak passes the rotation and the
            depthwise conv as one 1-to-E conv with the summed taps;
          * rotation + depthwise conv: out_re = dw(re, direct) + dw(im, crossed), and the same
            with the halves exchanged for out_im (``_ConvPlan.swapped_taps``), per span;
          * squeeze-excite pools each span; the output projection sums one 1x1 conv per span.
        """
        theta, proj = self.theta, self.proj
        c, n = theta.in_channels, theta.out_channels // 2
        first = (c + 1) // 2  # pairs holding channels < C
        spans = [(lo, hi) for lo, hi in ((0, first), (first, n)) if hi > lo]
        feats, firsts = {}, []
        for j in (0, 1):  # real, imaginary
            for lo, hi in spans:
                rows = slice(2 * lo + j, 2 * hi, 2)  # theta channels 2k + j
                t = F.conv2d(x, theta.weight[rows], theta.bias[rows])
                w = F.conv2d(x, proj.weight[rows], proj.bias[rows])
                feats[j, lo] = F.gelu(t) * w
                if lo == 0:
                    firsts.append((t, w))
        index = x.argmax(dim=1, keepdim=True)  # [B, 1, H, W], < C
        real, pair = index % 2 == 0, index // 2  # channel 2 pair + (1 - real)
        t, w = (torch.where(real, firsts[0][k].gather(1, pair), firsts[1][k].gather(1, pair)) for k in (0, 1))
        peak = F.gelu(t) * w
        direct, crossed = plan.swapped_taps()
        assert plan.bias is not None
        spread = direct + crossed  # peak, equal on all channels
        outs = []
        for j in (0, 1):
            for lo, hi in spans:
                part, groups = slice(j * n + lo, j * n + hi), hi - lo
                out = (
                    F.conv2d(feats[j, lo], direct[part], plan.bias[part], padding=1, groups=groups)
                    + F.conv2d(feats[1 - j, lo], crossed[part], None, padding=1, groups=groups)
                    + F.conv2d(peak, spread[part], None, padding=1)
                )
                outs.append(self.conv.act(out))
        return _project_maps(outs, _gates(outs, self.attn, plan.order), self.proj_out, out_scale, plan.order, residual)

    def _mix_weights(self, order: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """theta and proj as one linear layer: weight [2E, C] (theta rows, then proj rows, each
        with outputs in ``order``; None: natural), bias [2E], and ``peak_index`` [C, 2], the
        positions of input channel c's theta and proj outputs (the argmax picks one per pixel)."""
        e = self.theta.out_channels
        weight = torch.cat((self.theta.weight.flatten(1), self.proj.weight.flatten(1)))
        bias = torch.cat((self.theta.bias, self.proj.bias))
        position = torch.arange(e, device=weight.device)
        if order is not None:
            both = torch.cat((order, order + e))
            weight, bias = weight.index_select(0, both), bias.index_select(0, both)
            position = torch.empty_like(order).scatter_(0, order, position)
        position = position[: self.theta.in_channels]
        return weight, bias, torch.stack((position, position + e), dim=1)

    def weights(self, out_scale: torch.Tensor | None = None) -> CMixerWeights:
        """The inference forward's parameters in the form it uses (``out_scale`` as in ``forward``).
        Needs a BatchNorm without batch statistics (eval mode or frozen)."""
        plan = self._conv_plan()
        return CMixerWeights(
            *self._mix_weights(plan.order),
            plan,
            self.attn.weights(plan.order),
            *_projection(self.proj_out, out_scale, plan.order),
        )

    def _forward_batch_statistics(self, x: torch.Tensor, out_scale: torch.Tensor | None) -> torch.Tensor:
        """Training-mode BN: natural channel order, the conv module as it is."""
        rotation = self.complex.view(-1, 2)
        feat = _mix(_tokens(x), *self._mix_weights(None))
        if (self.conv.conv.in_channels // self.conv.conv.groups) % 2 == 0:
            feat = self.conv(_maps(feat), fold_rotation(self.conv.conv.weight, rotation))
        else:
            feat = self.conv(_maps(rotate_pairs(feat, rotation.to(feat.dtype))))
        tokens = _tokens(feat)
        weight, bias = _projection(self.proj_out, out_scale)
        return _project(tokens, _gated(weight, self.attn.weights()(tokens.mean((1, 2)))), bias)

    def _conv_plan(self) -> _ConvPlan:
        conv = self.conv.conv
        per_group = conv.in_channels // conv.groups
        rotation = self.complex.view(-1, 2)
        if per_group == 1:
            weight, bias = self.conv.folded(order=self._planar)
            return _ConvPlan(self._planar, rotation, weight, bias, conv.groups, factors=planar_factors(rotation))
        if per_group % 2:
            return _ConvPlan(None, rotation, *self.conv.folded(), conv.groups, factors=pair_factors(rotation))
        weight, bias = self.conv.folded(fold_rotation(conv.weight, rotation))
        if per_group > 2:
            return _ConvPlan(None, None, weight, bias, conv.groups)
        # One pair per group: in planar order, channel j*E/2 + k feeds output j*E/2 + k
        # ("direct" taps) and output (1-j)*E/2 + k ("crossed" taps, hence the half swap).
        taps = weight.view(-1, 2, 2, *weight.shape[2:])  # [pair, out, in, k, k]
        direct = torch.cat((taps[:, 0, 0], taps[:, 1, 1]))[:, None]
        crossed = torch.cat((taps[:, 1, 0], taps[:, 0, 1]))[:, None]
        return _ConvPlan(self._planar, None, direct, bias.index_select(0, self._planar), conv.in_channels, crossed)

    def _tile_rows(self, x: torch.Tensor) -> int:
        """Rows per tile: large maps in CPU inference without autograd, else all rows."""
        b, _, h, w = x.shape
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters()))
        if (
            needs_grad
            or x.device.type != "cpu"
            or torch.jit.is_tracing()
            or torch.jit.is_scripting()
            or torch.onnx.is_in_onnx_export()
            or torch.compiler.is_compiling()
        ):
            return h
        row = b * w * self.theta.out_channels
        if row * h < TILE_MIN_COUNT * TILE_ELEMENTS:
            return h
        return max(TILE_MIN_ROWS, TILE_ELEMENTS // row)

    def _forward_inference(self, x: torch.Tensor, weights: CMixerWeights, rows: int) -> torch.Tensor:
        """The forward without batch statistics, ``rows`` image rows at a time up to the
        squeeze-excite (each tile recomputes one halo row above and below for the 3x3 conv).

        With tiles the per-pixel part and the conv of a tile stay in cache, and tile-sized
        temporaries are reused by the allocator; on CPU this cuts the memory traffic and page
        faults that dominate the big early-stage maps.
        """
        tokens = _tokens(x)
        h = tokens.shape[1]
        plan = weights.plan
        tiles = []
        for top in range(0, h, rows):
            bottom = min(top + rows, h)
            first, last = max(top - 1, 0), min(bottom + 1, h)
            feat = _mix(tokens[:, first:last], weights.mix, weights.mix_bias, weights.peak_index)
            feat = plan.rotate(feat)
            feat = self.conv.act(plan.conv(_maps(feat)))
            tiles.append(_tokens(feat)[:, top - first : bottom - first])
        if len(tiles) == 1:
            pooled = tiles[0].mean((1, 2))
        else:
            sums = torch.stack([tile.sum((1, 2)) for tile in tiles])
            pooled = sums.sum(0) / (h * tokens.shape[2])
        weight = _gated(weights.proj_out, weights.gate(pooled))
        out = [_project(tile, weight, weights.proj_out_bias) for tile in tiles]
        return out[0] if len(out) == 1 else torch.cat(out, dim=2)


def _mix(tokens: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, peak_index: torch.Tensor) -> torch.Tensor:
    """The CMixer's per-pixel part before the rotation: w * gelu(theta) + w[m] * gelu(theta[m]).

    tokens: [B, H, W, C]; weight [2E, C], bias [2E], peak_index [C, 2] from
    ``CMixer._mix_weights`` -> [B, H, W, E] in the weights' channel order.
    """
    e = weight.shape[0] // 2
    # max(...).indices: the same first-maximum index as argmax, twice as fast on CPU
    index = tokens.max(dim=-1).indices  # [B, H, W]
    both = F.linear(tokens, weight, bias)  # [B, H, W, 2E]
    peak = both.gather(-1, peak_index[index])  # [B, H, W, 2]
    return torch.addcmul(F.gelu(peak[..., :1]) * peak[..., 1:], F.gelu(both[..., :e]), both[..., e:])


def _detached(value: _Nested) -> _Nested:
    """``value`` (tensors in nested tuples / NamedTuples, or other leaves) with every tensor
    detached: views of parameters made under ``no_grad`` still report ``requires_grad``."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, tuple):
        items = [_detached(item) for item in value]
        return type(value)(*items) if hasattr(value, "_fields") else tuple(items)
    return value


def _drop_cached_weights(module: Block, incompatible_keys: object) -> None:
    """``load_state_dict`` post-hook: the block's cached mixer weights are stale."""
    module._drop_weights()


def _normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    """GroupNorm with one group and no affine transform, as an instance norm of a
    [B, 1, C, H, W] view. Exported, this keeps every shape inferable, unlike F.group_norm's
    reshape to [B, 1, C*H*W] and back to a computed shape: with a dynamic batch axis
    onnxruntime needs known shapes to fuse adds into convs and keep its blocked layout."""
    return F.instance_norm(x.unsqueeze(1), eps=eps).squeeze(1)


class Block(nn.Module):
    """Pre-norm residual block: SMixer then CMixer, each scaled per channel and drop-pathed.

    After ``convert_to_deploy`` (inference only) the mixers' weights in the form their eager
    forward uses (``SMixer.weights``, ``CMixer.weights``) are computed once per device and dtype
    instead of on every call: about 40 fewer small ops per block, which is what limits a GPU at
    small batches. Used only without autograd (``torch.no_grad`` / ``torch.inference_mode``).
    ``train()`` drops the cache and the deploy state, ``load_state_dict`` the cache; editing
    the parameters in place in between is not supported.
    """

    def __init__(self, dim: int, expand_ratio: int, grouped: bool, drop_path: float) -> None:
        super().__init__()
        self.scale_1 = nn.Parameter(torch.full((1, dim, 1, 1), 1e-5))
        self.scale_2 = nn.Parameter(torch.full((1, dim, 1, 1), 1e-5))
        self.smixer = SMixer(dim, grouped)
        self.cmixer = CMixer(dim, expand_ratio, grouped)
        self.drop_path_1 = StochasticDepth(drop_path, "row")
        self.drop_path_2 = StochasticDepth(drop_path, "row")
        self.norm_1 = nn.GroupNorm(1, dim, eps=NORM_EPS)
        self.norm_2 = nn.GroupNorm(1, dim, eps=NORM_EPS)
        self._deployed = False
        self._weights: tuple[tuple[torch.device, torch.dtype], SMixerWeights, CMixerWeights] | None = None
        self.register_load_state_dict_post_hook(_drop_cached_weights)

    def convert_to_deploy(self) -> Block:
        """Inference from here on: cache the mixers' forward weights (see the class docstring)."""
        self.eval()
        self._deployed = True
        return self

    def train(self, mode: bool = True) -> Block:
        if mode:
            self._deployed = False
            self._drop_weights()
        return super().train(mode)

    def _drop_weights(self) -> None:
        self._weights = None

    def _cached_weights(self) -> tuple[SMixerWeights | None, CMixerWeights | None]:
        """The deployed mixers' weights for the parameters' device and dtype, else (None, None).
        Only without autograd: cached tensors carry no gradient."""
        if not self._deployed or torch.is_grad_enabled():
            return None, None
        key = (self.scale_1.device, self.scale_1.dtype)
        if self._weights is None or self._weights[0] != key:
            self._weights = (
                key,
                _detached(self.smixer.weights(self.scale_1)),
                _detached(self.cmixer.weights(self.scale_2)),
            )
        return self._weights[1], self._weights[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C, H, W] -> [B, C, H, W]."""
        if torch.onnx.is_in_onnx_export() and not self.training:
            # the SMixer takes norm_1's affine transform into its input projection
            x = self.smixer.forward_nchw(_normalize(x, self.norm_1.eps), self.scale_1, self.norm_1, residual=x)
            norm = self.norm_2
            normed = _normalize(x, norm.eps) * norm.weight.view(-1, 1, 1) + norm.bias.view(-1, 1, 1)
            return self.cmixer.forward_nchw(normed, self.scale_2, residual=x)
        s_weights, c_weights = self._cached_weights()
        x = x + self.drop_path_1(self.smixer(self.norm_1(x), self.scale_1, s_weights))
        return x + self.drop_path_2(self.cmixer(self.norm_2(x), self.scale_2, c_weights))
