# Follows the design of SpaRTAN (henry-pay/SpaRTAN, Apache-2.0).
"""SpaRTAN's ONNX export form: ``reparameterize_model(model, export=ExportForm(fixed_shapes))``
(``rtdetr_spartan.nn.reparameterize``) gives blocks that trace to a graph that onnxruntime runs
fast (as detectron2 patches a model before export); an inference block makes its export form
from its own tensors, passed explicitly. ``rtdetr_spartan.deploy.export`` converts before tracing.

The form computes the canonical math (``spartan_layers``) in plain NCHW ops, no complex dtype.
The reason is onnxruntime's CPU layout: it runs convs in a blocked channel layout and converts
to and from plain NCHW around every op outside a short list (channel splits, gathers,
broadcast products, Transpose, GroupNorm...). The eager form's token views would become a
``Transpose`` pair around every mixer. So the large tensors flow between convs and same-shape
elementwise ops only:
  * in the CMixer the real and imaginary channels are separate maps from start to end, each
    computed in two channel spans; the argmax channel's theta / proj values
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

from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from rtdetr_spartan.nn.backbones.spartan_layers import GatedProjection, SqueezeExcite

__all__ = ["ExportBlock", "ExportCMixer", "ExportSMixer"]

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


def _frozen(tensor: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(tensor.detach().clone(memory_format=torch.contiguous_format), requires_grad=False)


class _ConvGate(nn.Module):
    """``SqueezeExcite`` laid out for inputs split in parts of ``sizes`` channels: 1x1 convs on
    the parts' pooled maps, the hidden width padded with zero channels (relu(0) = 0, no weight)
    to a multiple of LAYOUT_BLOCK, so the gate convs stay in onnxruntime's blocked layout."""

    def __init__(self, gate: SqueezeExcite, sizes: Sequence[int], fixed_shapes: bool) -> None:
        super().__init__()
        w1, b1 = gate.squeeze.weight.flatten(1), cast(torch.Tensor, gate.squeeze.bias)
        w2, b2 = gate.expand.weight.flatten(1), cast(torch.Tensor, gate.expand.bias)
        pad = -w1.shape[0] % LAYOUT_BLOCK
        w1 = torch.cat((w1, w1.new_zeros(pad, w1.shape[1])))
        b1 = torch.cat((b1, b1.new_zeros(pad)))
        w2 = torch.cat((w2, w2.new_zeros(w2.shape[0], pad)), dim=1)
        self.sizes, self.fixed_shapes = [int(s) for s in sizes], fixed_shapes
        self.squeeze = nn.ParameterList(_frozen(w[:, :, None, None]) for w in w1.split(self.sizes, 1))
        self.expand = nn.ParameterList(_frozen(w[:, :, None, None]) for w in w2.split(self.sizes))
        self.squeeze_bias = _frozen(b1)
        self.expand_bias = nn.ParameterList(_frozen(b) for b in b2.split(self.sizes))

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


class ExportSMixer(nn.Module):
    """The SMixer with its layer scale, in export form, with the affine transform of the
    GroupNorm ``norm`` before it folded into its input projection.

    proj_in: [C/2, C] and proj_in_bias [C/2]; gamma [C/2]; convs: the fused h_conv and l_conv;
    gate: the two squeeze-excites as one (block-diagonal); proj_out: layer scale in.
    """

    def __init__(
        self,
        proj_in: torch.Tensor,
        proj_in_bias: torch.Tensor,
        gamma: torch.Tensor,
        convs: tuple[nn.Module, nn.Module],
        gate: SqueezeExcite,
        proj_out: GatedProjection,
        norm: nn.GroupNorm,
        fixed_shapes: bool,
    ) -> None:
        super().__init__()
        self.proj_in = _frozen((proj_in * norm.weight)[:, :, None, None])
        self.proj_in_bias = _frozen(proj_in_bias + proj_in @ norm.bias)
        self.gamma = _frozen(gamma.view(1, -1, 1, 1))
        self.h_conv, self.l_conv = convs
        half = gamma.shape[0]
        self.gate = _ConvGate(gate, (half, half), fixed_shapes)
        self.proj_out = nn.ParameterList(_frozen(w) for w in proj_out.weight.split(half, 1))
        self.proj_out_bias = _frozen(cast(torch.Tensor, proj_out.bias))
        self.fixed_shapes = fixed_shapes

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """x: [B, C, H, W] normalized without affine; residual [B, C, H, W] ->
        residual + out_scale * SMixer(norm(x))."""
        y = F.conv2d(x, self.proj_in, self.proj_in_bias)
        y = y * (1.0 + self.gamma) + _expand_like(-self.gamma * F.adaptive_avg_pool2d(y, 1), y, self.fixed_shapes)
        parts = [self.h_conv(y), self.l_conv(y)]
        gated = [part * gate for part, gate in zip(parts, self.gate(parts))]
        return _conv_sum(gated, list(self.proj_out), self.proj_out_bias, residual)


class ExportCMixer(nn.Module):
    """The CMixer with its layer scale, in export form.

    The E channels are in planar order (real parts first): separate real / imaginary half maps,
    each in two channel spans, its first pairs (holding the theta / proj channels below C, which
    the argmax can pick; rounded up to whole conv groups) and the rest. The argmax channel's
    product ("peak", [B, 1, H, W]) is gathered from the first spans; being equal on all
    channels, it passes the rotation and the 3x3 conv as one 1-to-E conv with the summed taps.
    The rotation is in the taps: out_re = conv(re, direct) + conv(im, crossed), and with the
    halves exchanged for out_im.

    mix: theta and proj rows [2E, C] (each planar) and mix_bias [2E]; taps: direct, crossed
    [E, q, 3, 3] of a conv with groups of q channels (crossed: output row j reads the other
    half) and its bias [E]; gate: the squeeze-excite on planar channels; proj_out: planar
    input channels, layer scale in.
    """

    def __init__(
        self,
        mix: torch.Tensor,
        mix_bias: torch.Tensor,
        taps: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        gate: SqueezeExcite,
        proj_out: GatedProjection,
        fixed_shapes: bool,
    ) -> None:
        super().__init__()
        direct, crossed, conv_bias = taps
        theta, proj = mix.chunk(2)
        theta_bias, proj_bias = mix_bias.chunk(2)
        e, c, per_group = theta.shape[0], theta.shape[1], direct.shape[1]
        n = e // 2  # pairs
        first = min(n, -(-((c + 1) // 2) // per_group) * per_group)  # pairs holding channels < C
        self.spans = [(lo, hi) for lo, hi in ((0, first), (first, n)) if hi > lo]
        spread = direct.sum(1, keepdim=True) + crossed.sum(1, keepdim=True)  # the peak, equal on all channels
        full = {"theta": theta[:, :, None, None], "theta_b": theta_bias, "proj": proj[:, :, None, None]}
        full.update(proj_b=proj_bias, direct=direct, crossed=crossed, spread=spread, bias=conv_bias)
        # one span of one half map: its 1x1 rows and 3x3 taps; real half first
        self.parts = nn.ModuleList(
            nn.ParameterDict({name: _frozen(t[j * n + lo : j * n + hi]) for name, t in full.items()})
            for j in (0, 1)
            for lo, hi in self.spans
        )
        sizes = [hi - lo for _ in (0, 1) for lo, hi in self.spans]
        self.gate = _ConvGate(gate, sizes, fixed_shapes)
        self.proj_out = nn.ParameterList(_frozen(w) for w in proj_out.weight.split(sizes, 1))
        self.proj_out_bias = _frozen(cast(torch.Tensor, proj_out.bias))

    def _halves(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats, firsts = [], []
        parts = cast(list[nn.ParameterDict], list(self.parts))
        for k, part in enumerate(parts):
            t = F.conv2d(x, part["theta"], part["theta_b"])
            w = F.conv2d(x, part["proj"], part["proj_b"])
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
            groups = part["direct"].shape[0] // part["direct"].shape[1]
            out = (
                F.conv2d(feats[k], part["direct"], part["bias"], padding=1, groups=groups)
                + F.conv2d(other, part["crossed"], None, padding=1, groups=groups)
                + F.conv2d(peak, part["spread"], None, padding=1)
            )
            outs.append(F.gelu(out))
        return outs

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """x: [B, C, H, W]; residual [B, C, H, W] -> residual + out_scale * CMixer(x)."""
        parts = self._halves(x)
        gated = [part * gate for part, gate in zip(parts, self.gate(parts))]
        return _conv_sum(gated, list(self.proj_out), self.proj_out_bias, residual)


def _normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    """GroupNorm with one group and no affine transform, as an instance norm of a
    [B, 1, C, H, W] view. Exported, this keeps every shape inferable, unlike F.group_norm's
    reshape to [B, 1, C*H*W] and back to a computed shape: with a dynamic batch axis
    onnxruntime needs known shapes to fuse adds into convs and keep its blocked layout."""
    return F.instance_norm(x.unsqueeze(1), eps=eps).squeeze(1)


class ExportBlock(nn.Module):
    """The block in export form (see the module docstring): the mixers' export forms and the
    two GroupNorms (norm_1's affine transform is in ``smixer``)."""

    def __init__(self, smixer: ExportSMixer, cmixer: ExportCMixer, norm_1: nn.GroupNorm, norm_2: nn.GroupNorm) -> None:
        super().__init__()
        self.eps_1, self.eps_2 = norm_1.eps, norm_2.eps
        self.smixer = smixer
        self.norm_2_weight = _frozen(norm_2.weight.view(-1, 1, 1))
        self.norm_2_bias = _frozen(norm_2.bias.view(-1, 1, 1))
        self.cmixer = cmixer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C, H, W] -> [B, C, H, W]."""
        x = self.smixer(_normalize(x, self.eps_1), residual=x)
        normed = _normalize(x, self.eps_2) * self.norm_2_weight + self.norm_2_bias
        return self.cmixer(normed, residual=x)
