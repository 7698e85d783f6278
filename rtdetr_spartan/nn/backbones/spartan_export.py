# Follows the design of SpaRTAN (henry-pay/SpaRTAN, Apache-2.0).
"""SpaRTAN's ONNX export form: ``convert_for_export(model, fixed_shapes=...)`` returns a copy of
``model`` whose SpaRTAN blocks trace to a graph that onnxruntime runs fast (as detectron2 patches
a model before export). ``rtdetr_spartan.deploy.export`` converts before tracing.

The form computes the canonical math (``spartan_layers``) in plain NCHW ops, no complex dtype.
The reason is onnxruntime's CPU layout: it runs convs in a blocked channel layout and converts
to and from plain NCHW around every op outside a short list (channel splits, gathers,
broadcast products, Transpose, GroupNorm...). The eager form's token views would become a
``Transpose`` pair around every mixer. So the large tensors flow between convs and same-shape
elementwise ops only:
  * in the CMixer the real and imaginary channels are separate maps from start to end (planar
    conv plans), each computed in two channel spans; the argmax channel's theta / proj values
    are gathered from the first spans instead of from extra C-channel convs;
  * norm_1's affine transform is folded into the SMixer's input projection, each residual add
    into the last conv of its mixer, and GroupNorm is an instance norm of a 5-D view (every
    shape stays inferable, which onnxruntime's fusions need when the batch axis is dynamic);
  * squeeze-excite runs as 1x1 convs on pooled maps, its hidden width padded to LAYOUT_BLOCK;
    with ``fixed_shapes`` (an export without dynamic axes) its gates and the SMixer's
    centre-boost shift are resized to full maps, so that the products stay in the blocked layout.
On RT-DETR-SpaRTAN-T at 640 px, one thread, the fixed-shape form runs in about 0.6x the time of
a trace of the eager code.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from rtdetr_spartan.nn.backbones.spartan_inference import (
    InferenceBlock,
    InferenceCMixer,
    InferenceSMixer,
    SqueezeGate,
    convert_for_inference,
)
from rtdetr_spartan.nn.backbones.spartan_layers import Block, ConvNormAct, maps, tokens

__all__ = ["ExportBlock", "ExportCMixer", "ExportSMixer", "convert_for_export"]

# onnxruntime's blocked ("NCHWc") conv layout holds 8 (AVX2) or 16 (AVX-512) channels per block;
# convs whose channel counts are not multiples of it fall back to plain NCHW.
LAYOUT_BLOCK = 16


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


class _ConvGate(nn.Module):
    """Squeeze-excite as 1x1 convs on pooled maps for inputs split in parts of ``sizes`` channels;
    the hidden width padded with zero channels (relu(0) = 0, no weight) to a multiple of
    LAYOUT_BLOCK, so the gate convs stay in onnxruntime's blocked layout."""

    def __init__(self, gate: SqueezeGate, sizes: Sequence[int], fixed_shapes: bool) -> None:
        super().__init__()
        w1, b1, w2, b2 = gate.w1, gate.b1, gate.w2, gate.b2
        pad = -w1.shape[0] % LAYOUT_BLOCK
        w1 = torch.cat((w1, w1.new_zeros(pad, w1.shape[1])))
        b1 = torch.cat((b1, b1.new_zeros(pad)))
        w2 = torch.cat((w2, w2.new_zeros(w2.shape[0], pad)), dim=1)
        self.sizes, self.fixed_shapes = [int(s) for s in sizes], fixed_shapes
        self.squeeze = nn.ParameterList(
            nn.Parameter(w[:, :, None, None].clone(), requires_grad=False) for w in w1.split(self.sizes, 1)
        )
        self.expand = nn.ParameterList(
            nn.Parameter(w[:, :, None, None].clone(), requires_grad=False) for w in w2.split(self.sizes)
        )
        self.squeeze_bias = nn.Parameter(b1.clone(), requires_grad=False)
        self.expand_bias = nn.ParameterList(nn.Parameter(b.clone(), requires_grad=False) for b in b2.split(self.sizes))

    def forward(self, parts: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """parts: [B, E_i, H, W] -> the gate of cat(parts), one factor per part: [B, E_i, 1, 1],
        or [B, E_i, H, W] with ``fixed_shapes``."""
        pooled = [F.adaptive_avg_pool2d(part, 1) for part in parts]
        hidden = F.relu(_conv_sum(pooled, list(self.squeeze), self.squeeze_bias))
        gates = [torch.sigmoid(F.conv2d(hidden, w, b)) for w, b in zip(self.expand, self.expand_bias)]
        return [_expand_like(gate, part, self.fixed_shapes) for gate, part in zip(gates, parts)]


def _expand_like(factor: torch.Tensor, target: torch.Tensor, fixed_shapes: bool) -> torch.Tensor:
    """factor [B, C, 1, 1] for an elementwise op with target [B, C, H, W]: as it is (broadcast),
    or with ``fixed_shapes`` resized to H x W (nearest neighbour), which keeps the op in
    onnxruntime's blocked layout."""
    if not fixed_shapes:
        return factor
    return F.interpolate(factor, scale_factor=(float(target.shape[2]), float(target.shape[3])), mode="nearest")


def _frozen(tensor: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(tensor.detach().clone(), requires_grad=False)


class ExportSMixer(nn.Module):
    """``InferenceSMixer`` in export form, with the preceding GroupNorm's affine transform
    ``norm`` folded into its input projection."""

    def __init__(self, source: InferenceSMixer, norm: nn.GroupNorm, fixed_shapes: bool) -> None:
        super().__init__()
        weight = source.proj_in * norm.weight  # [C/2, C]
        self.proj_in = _frozen(weight[:, :, None, None])
        self.proj_in_bias = _frozen(source.proj_in_bias + source.proj_in @ norm.bias)
        self.gamma = _frozen(source.gamma.view(1, -1, 1, 1))
        self.h_conv, self.l_conv = source.h_conv, source.l_conv
        half = source.gamma.shape[0]
        self.gate = _ConvGate(source.gate, (half, half), fixed_shapes)
        self.proj_out = nn.ParameterList(_frozen(w[:, :, None, None]) for w in source.proj_out.split(half, 1))
        self.proj_out_bias = _frozen(source.proj_out_bias)
        self.fixed_shapes = fixed_shapes

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """x: [B, C, H, W] normalized without affine; residual [B, C, H, W] ->
        residual + out_scale * SMixer(norm(x))."""
        y = F.conv2d(x, self.proj_in, self.proj_in_bias)
        y = y * (1.0 + self.gamma) + _expand_like(-self.gamma * F.adaptive_avg_pool2d(y, 1), y, self.fixed_shapes)
        parts = [self.h_conv(y), self.l_conv(y)]
        gated = [part * gate for part, gate in zip(parts, self.gate(parts))]
        return _conv_sum(gated, list(self.proj_out), self.proj_out_bias, residual)


class _Span(nn.Module):
    """One channel span of one half map: its 1x1 rows and 3x3 taps (see ``ExportCMixer``)."""

    def __init__(self, **tensors: torch.Tensor) -> None:
        super().__init__()
        self.theta, self.theta_b = _frozen(tensors["theta"]), _frozen(tensors["theta_b"])
        self.proj, self.proj_b = _frozen(tensors["proj"]), _frozen(tensors["proj_b"])
        self.direct, self.crossed = _frozen(tensors["direct"]), _frozen(tensors["crossed"])
        self.spread, self.bias = _frozen(tensors["spread"]), _frozen(tensors["bias"])


class ExportCMixer(nn.Module):
    """``InferenceCMixer`` in export form.

    Planar plans (depthwise conv, or one channel pair per group): separate real / imaginary
    half maps, each in two channel spans, its first ceil(C/2) pairs (the theta / proj channels
    below C, which the argmax can pick) and the rest. The argmax channel's product ("peak",
    [B, 1, H, W]) is gathered from the first spans; being equal on all channels, it passes
    the rotation and the depthwise conv as one 1-to-E conv with the summed taps. Rotation +
    depthwise conv: out_re = dw(re, direct) + dw(im, crossed), and with the halves exchanged
    for out_im. Other plans: the natural channel order, the rotation on token views.
    """

    def __init__(self, source: InferenceCMixer, fixed_shapes: bool) -> None:
        super().__init__()
        e = source.mix.shape[0] // 2
        c = source.mix.shape[1]
        self.planar = source.order is not None
        self.source = source
        if not self.planar:
            self.gate = _ConvGate(source.gate, (e,), fixed_shapes)
            self.proj_out = nn.ParameterList([_frozen(source.proj_out[:, :, None, None])])
            self.proj_out_bias = _frozen(source.proj_out_bias)
            return
        n, first = e // 2, (c + 1) // 2  # pairs; pairs holding channels < C
        self.spans = [(lo, hi) for lo, hi in ((0, first), (first, n)) if hi > lo]
        direct, crossed = source.conv_weight, source.crossed
        if crossed is None:  # depthwise conv after the rotation: its taps take the rotation
            assert source.rotation is not None
            re, im = source.rotation[:, 0], source.rotation[:, 1]
            direct, crossed = (
                direct * torch.cat((re, re)).view(-1, 1, 1, 1),
                direct * torch.cat((-im, im)).view(-1, 1, 1, 1),
            )
        else:
            crossed = torch.cat(crossed.chunk(2)[::-1])  # taps whose output halves were swapped
        spread = direct + crossed  # the peak, equal on all channels
        theta, proj = source.mix[:e, :, None, None], source.mix[e:, :, None, None]
        theta_b, proj_b = source.mix_bias[:e], source.mix_bias[e:]
        names = []
        for j in (0, 1):  # real, imaginary
            for lo, hi in self.spans:
                rows = out = slice(j * n + lo, j * n + hi)
                names.append(
                    {
                        "theta": theta[rows],
                        "theta_b": theta_b[rows],
                        "proj": proj[rows],
                        "proj_b": proj_b[rows],
                        "direct": direct[out],
                        "crossed": crossed[out],
                        "spread": spread[out],
                        "bias": source.conv_bias[out],
                    }
                )
        self.parts = nn.ModuleList(_Span(**tensors) for tensors in names)
        sizes = [hi - lo for _ in (0, 1) for lo, hi in self.spans]
        self.gate = _ConvGate(source.gate, sizes, fixed_shapes)
        self.proj_out = nn.ParameterList(_frozen(w[:, :, None, None]) for w in source.proj_out.split(sizes, 1))
        self.proj_out_bias = _frozen(source.proj_out_bias)

    def _natural(self, x: torch.Tensor) -> list[torch.Tensor]:
        s = self.source
        e = s.mix.shape[0] // 2
        both = F.conv2d(x, s.mix[:, :, None, None], s.mix_bias)
        theta, weight = both[:, :e], both[:, e:]
        index = x.argmax(dim=1, keepdim=True)  # [B, 1, H, W]
        peak = F.gelu(theta.gather(1, index)) * weight.gather(1, index)
        feat = maps(s.rotate(tokens(F.gelu(theta) * weight + peak)))
        return [s.conv(feat)]

    def _halves(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats, firsts = [], []
        parts = cast(list[_Span], list(self.parts))
        for k, part in enumerate(parts):
            t = F.conv2d(x, part.theta, part.theta_b)
            w = F.conv2d(x, part.proj, part.proj_b)
            feats.append(F.gelu(t) * w)
            if k % len(self.spans) == 0:
                firsts.append((t, w))
        index = x.argmax(dim=1, keepdim=True)  # [B, 1, H, W], < C
        real, pair = index % 2 == 0, index // 2  # channel 2 pair + (1 - real)
        t, w = (torch.where(real, firsts[0][k].gather(1, pair), firsts[1][k].gather(1, pair)) for k in (0, 1))
        peak = F.gelu(t) * w
        spans, outs = len(self.spans), []
        for k, part in enumerate(parts):
            other = feats[(k + spans) % (2 * spans)]  # the same span of the other half
            groups = part.direct.shape[0]
            out = (
                F.conv2d(feats[k], part.direct, part.bias, padding=1, groups=groups)
                + F.conv2d(other, part.crossed, None, padding=1, groups=groups)
                + F.conv2d(peak, part.spread, None, padding=1)
            )
            outs.append(F.gelu(out))
        return outs

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """x: [B, C, H, W]; residual [B, C, H, W] -> residual + out_scale * CMixer(x)."""
        parts = self._halves(x) if self.planar else self._natural(x)
        gated = [part * gate for part, gate in zip(parts, self.gate(parts))]
        return _conv_sum(gated, list(self.proj_out), self.proj_out_bias, residual)


def _normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    """GroupNorm with one group and no affine transform, as an instance norm of a
    [B, 1, C, H, W] view. Exported, this keeps every shape inferable, unlike F.group_norm's
    reshape to [B, 1, C*H*W] and back to a computed shape: with a dynamic batch axis
    onnxruntime needs known shapes to fuse adds into convs and keep its blocked layout."""
    return F.instance_norm(x.unsqueeze(1), eps=eps).squeeze(1)


class ExportBlock(nn.Module):
    """``InferenceBlock`` in export form (see the module docstring)."""

    def __init__(self, source: InferenceBlock, fixed_shapes: bool) -> None:
        super().__init__()
        self.eps_1, self.eps_2 = source.norm_1.eps, source.norm_2.eps
        self.smixer = ExportSMixer(source.smixer, source.norm_1, fixed_shapes)
        self.norm_2_weight = _frozen(source.norm_2.weight.view(-1, 1, 1))
        self.norm_2_bias = _frozen(source.norm_2.bias.view(-1, 1, 1))
        self.cmixer = ExportCMixer(source.cmixer, fixed_shapes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C, H, W] -> [B, C, H, W]."""
        x = self.smixer(_normalize(x, self.eps_1), residual=x)
        normed = _normalize(x, self.eps_2) * self.norm_2_weight + self.norm_2_bias
        return self.cmixer(normed, residual=x)


def _replace(module: nn.Module, fixed_shapes: bool) -> None:
    for name, child in module.named_children():
        if isinstance(child, InferenceBlock):
            setattr(module, name, ExportBlock(child, fixed_shapes))
        else:
            _replace(child, fixed_shapes)


@torch.no_grad()
def convert_for_export(model: nn.Module, *, fixed_shapes: bool) -> nn.Module:
    """A copy of ``model`` in eval mode with every SpaRTAN block in ONNX export form.

    ``model`` may hold canonical blocks (converted by ``convert_for_inference`` first) or
    inference-form ones. ``fixed_shapes``: the export has no dynamic axes, so the form may
    expand broadcast factors to full maps (faster in onnxruntime; the graph then serves only
    the traced input size)."""
    if any(isinstance(m, (Block, ConvNormAct)) for m in model.modules()):
        model = convert_for_inference(model)
    converted = copy.deepcopy(model).eval()
    if isinstance(converted, InferenceBlock):
        return ExportBlock(converted, fixed_shapes).eval()
    _replace(converted, fixed_shapes)
    return converted
