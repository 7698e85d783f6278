# Follows the design of SpaRTAN (henry-pay/SpaRTAN, Apache-2.0).
"""SpaRTAN's eager inference form: ``convert_for_inference(model)`` returns a copy of ``model``
whose SpaRTAN layers compute the canonical math (``spartan_layers``) faster, for CPU and GPU
inference (as timm's ``reparameterize_model``). The original is left untouched.

What the conversion does, once (all exact up to float rounding):
  * every BatchNorm (eval statistics, or frozen) is folded into the conv before it;
  * the layer scales and the squeeze-excite layers are in the output projections' form; theta
    and proj are one linear layer; the SMixer's two squeeze-excites one block-diagonal pair:
    about 45 ops per block instead of 90, which is what limits a GPU at small batches;
  * the CMixer's E channels between its 1x1 convs are reordered so that the rotation is cheap
    (``_ConvPlan``): with a depthwise conv, "planar" order (real parts first), where the rotation
    is two contiguous ops; with one pair per group, the rotation goes into the taps and the conv
    runs as two depthwise convs (oneDNN's 2-channel grouped conv is about twice as slow); with
    other groupings the natural order, the rotation in the taps (even group size) or on the
    activations (odd group size, where pairs straddle groups);
  * on the CPU, large CMixer maps run in row tiles (``tile_rows``): temporaries stay in cache and
    the allocator does not return and re-fault memory on every block.
"""

from __future__ import annotations

import copy
from typing import ClassVar, cast

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from rtdetr_spartan.nn.backbones.spartan_layers import (
    Activation,
    Block,
    CMixer,
    ConvNormAct,
    SMixer,
    SqueezeExcite,
    conv_bias,
    fold_rotation,
    gated_projection,
    maps,
    tokens,
)

__all__ = [
    "FusedConvAct",
    "SqueezeGate",
    "folded_conv",
    "planar_order",
    "InferenceBlock",
    "InferenceCMixer",
    "InferenceSMixer",
    "convert_for_inference",
    "convert_in_place",
]

# CPU tiles: a CMixer map of at least TILE_MIN_COUNT * TILE_ELEMENTS elements is processed in row
# tiles of about TILE_ELEMENTS (fp32: 1 MiB per temporary, which stays in L2) and at least
# TILE_MIN_ROWS rows (each tile recomputes a halo row on either side for the 3x3 conv).
TILE_ELEMENTS = 1 << 18
TILE_MIN_ROWS = 8
TILE_MIN_COUNT = 4


def folded_conv(module: ConvNormAct, weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The conv weight (``weight`` if given) and bias with the module's norm folded in. The norm
    must normalize with running statistics: a BatchNorm in eval mode or a FrozenBatchNorm2d."""
    w, bias = (module.conv.weight if weight is None else weight), None
    norm = module.norm
    if isinstance(norm, nn.Identity):
        return w, bias
    if isinstance(norm, (nn.BatchNorm2d, nn.SyncBatchNorm)) and (norm.training or not norm.track_running_stats):
        raise ValueError("convert_for_inference: a BatchNorm normalizes with batch statistics; call model.eval()")
    if not isinstance(norm, (nn.BatchNorm2d, nn.SyncBatchNorm, FrozenBatchNorm2d)):
        raise TypeError(f"convert_for_inference: cannot fold a {type(norm).__name__}")
    weight, bias, mean, var = (
        cast(torch.Tensor, t) for t in (norm.weight, norm.bias, norm.running_mean, norm.running_var)
    )
    scale = weight * torch.rsqrt(var + norm.eps)
    return w * scale.view(-1, 1, 1, 1), bias - mean * scale


class FusedConvAct(nn.Module):
    """A ``ConvNormAct`` with its norm folded into the conv: act(conv(x)), the conv with a bias."""

    def __init__(self, conv: nn.Conv2d, act: Activation | None) -> None:
        super().__init__()
        self.conv = conv
        self.act = act

    @classmethod
    def fuse(
        cls, module: ConvNormAct, weight: torch.Tensor | None = None, order: torch.Tensor | None = None
    ) -> FusedConvAct:
        """``module`` with its norm folded in; ``weight`` replaces its conv weight, ``order``
        permutes a depthwise conv's channels."""
        w, b = folded_conv(module, weight)
        src = module.conv
        if b is None:
            b = w.new_zeros(w.shape[0])
        if order is not None:
            w, b = w.index_select(0, order), b.index_select(0, order)
        conv = copy.deepcopy(src)
        conv.weight, conv.bias = nn.Parameter(w.detach().clone()), nn.Parameter(b.detach().clone())
        return cls(conv, module.act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, in, H, W] -> [B, out, H', W']."""
        x = self.conv(x)
        return x if self.act is None else self.act(x)


def _buffers(module: nn.Module, **tensors: torch.Tensor | None) -> None:
    for name, tensor in tensors.items():
        module.register_buffer(name, None if tensor is None else tensor.detach().clone())


class SqueezeGate(nn.Module):
    """Squeeze-excite as two linear layers on pooled means: sigmoid(w2 relu(w1 p + b1) + b2)."""

    w1: torch.Tensor  # [S, E]
    b1: torch.Tensor  # [S]
    w2: torch.Tensor  # [E, S]
    b2: torch.Tensor  # [E]

    def __init__(self, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor) -> None:
        super().__init__()
        _buffers(self, w1=w1, b1=b1, w2=w2, b2=b2)

    @classmethod
    def of(cls, se: SqueezeExcite, order: torch.Tensor | None = None) -> SqueezeGate:
        """``se``'s layers with the channels in ``order`` (None: natural)."""
        w1, w2, b2 = se.squeeze.weight.flatten(1), se.expand.weight.flatten(1), conv_bias(se.expand)
        if order is not None:
            w1, w2, b2 = w1.index_select(1, order), w2.index_select(0, order), b2.index_select(0, order)
        return cls(w1, conv_bias(se.squeeze), w2, b2)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """pooled: [B, E] -> gate [B, E]."""
        return torch.sigmoid(F.linear(F.relu(F.linear(pooled, self.w1, self.b1)), self.w2, self.b2))


class InferenceSMixer(nn.Module):
    """``SMixer`` with its layer scale, for inference (see the module docstring)."""

    proj_in: torch.Tensor  # [C/2, C]
    proj_in_bias: torch.Tensor  # [C/2]
    gamma: torch.Tensor  # [C/2]
    proj_out: torch.Tensor  # [C, C], out_scale folded in
    proj_out_bias: torch.Tensor  # [C]

    def __init__(self, source: SMixer, out_scale: torch.Tensor) -> None:
        super().__init__()
        scale = out_scale.view(-1)
        _buffers(
            self,
            proj_in=source.proj_in.weight.flatten(1),
            proj_in_bias=conv_bias(source.proj_in),
            gamma=source.gamma.view(-1),
            proj_out=source.proj_out.weight.flatten(1) * scale[:, None],
            proj_out_bias=conv_bias(source.proj_out) * scale,
        )
        self.h_conv = FusedConvAct.fuse(source.h_conv)
        self.l_conv = nn.Sequential(*(FusedConvAct.fuse(m) for m in source.l_conv))  # type: ignore[arg-type]
        hi, lo = SqueezeGate.of(source.h_attn), SqueezeGate.of(source.l_attn)
        self.gate = SqueezeGate(
            torch.block_diag(hi.w1, lo.w1),
            torch.cat((hi.b1, lo.b1)),
            torch.block_diag(hi.w2, lo.w2),
            torch.cat((hi.b2, lo.b2)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C, H, W] channels_last -> out_scale * SMixer(x): [B, C, H, W]."""
        y = F.linear(tokens(x), self.proj_in)  # bias enters the shift
        shift = torch.addcmul(self.proj_in_bias, y.mean((1, 2), keepdim=True), -self.gamma)
        y = maps(torch.addcmul(shift, y, 1.0 + self.gamma))
        both = torch.cat((tokens(self.h_conv(y)), tokens(self.l_conv(y))), dim=-1)
        return gated_projection(both, self.proj_out, self.proj_out_bias, self.gate(both.mean((1, 2))))


def planar_order(channels: int) -> torch.Tensor:
    """Channel order with the pairs' first members (real parts) first: 0, 2, 4, ..., 1, 3, ..."""
    return torch.cat((torch.arange(0, channels, 2), torch.arange(1, channels, 2)))


class InferenceCMixer(nn.Module):
    """``CMixer`` with its layer scale, for inference (see the module docstring).

    Buffers hold the E channels between the 1x1 convs in ``order`` (None: natural): ``mix`` is
    theta and proj as one linear layer, ``rotation`` the rotation left to apply to the
    activations (None: in the conv taps), ``conv_weight`` the 3x3 conv (norm folded in) and
    ``crossed`` its second depthwise weight in the one-pair-per-group plan.
    """

    mix: torch.Tensor  # [2E, C]: theta rows, then proj rows, each in `order`
    mix_bias: torch.Tensor  # [2E]
    peak_index: torch.Tensor  # [C, 2]: positions of input channel c's theta and proj outputs
    order: torch.Tensor | None  # [E]
    rotation: torch.Tensor | None  # [E/2, 2]
    rotation_factors: torch.Tensor | None  # ``rotate``'s factors: [2, E] natural, [2, 2, E/2] planar
    conv_weight: torch.Tensor  # [E, E / groups, 3, 3]
    conv_bias: torch.Tensor  # [E]
    crossed: torch.Tensor | None  # [E, 1, 3, 3]: taps whose output halves are swapped
    proj_out: torch.Tensor  # [C, E], scale folded in
    proj_out_bias: torch.Tensor  # [C]

    def __init__(self, source: CMixer, out_scale: torch.Tensor, tile_rows: bool = True) -> None:
        super().__init__()
        conv = source.conv.conv
        e, per_group = conv.in_channels, conv.in_channels // conv.groups
        rotation = source.complex.view(-1, 2)
        self.groups, self.tile_rows, self.act = conv.groups, tile_rows, source.conv.act
        order, crossed, rest = None, None, None
        if per_group == 1:  # depthwise: planar order, rotation on the activations
            order, rest = planar_order(e), rotation
            weight, bias = folded_conv(source.conv)
            weight, bias = weight.index_select(0, order), bias.index_select(0, order)  # type: ignore[union-attr]
        elif per_group % 2:  # pairs straddle groups: natural order, rotation on the activations
            rest = rotation
            weight, bias = folded_conv(source.conv)
        else:
            weight, bias = folded_conv(source.conv, fold_rotation(conv.weight, rotation))
            if per_group == 2:
                # One pair per group: in planar order, channel j*E/2 + k feeds output j*E/2 + k
                # ("direct" taps) and output (1-j)*E/2 + k ("crossed" taps, hence the half swap).
                order = planar_order(e)
                taps = weight.view(-1, 2, 2, *weight.shape[2:])  # [pair, out, in, k, k]
                weight = torch.cat((taps[:, 0, 0], taps[:, 1, 1]))[:, None]
                crossed = torch.cat((taps[:, 1, 0], taps[:, 0, 1]))[:, None]
                bias = bias.index_select(0, order)  # type: ignore[union-attr]
                self.groups = e
        assert bias is not None
        factors = None
        if rest is not None:  # out = x * factors[0] + swap(x) * factors[1]
            re, im = rest[:, 0], rest[:, 1]
            if order is None:
                factors = torch.stack((re.repeat_interleave(2), torch.stack((-im, im), 1).flatten()))
            else:  # [[re], [im]] times the real parts plus [[-im], [re]] times the imaginary ones
                factors = torch.stack((torch.stack((re, im)), torch.stack((-im, re))))
        scale = out_scale.view(-1)
        proj_out = source.proj_out.weight.flatten(1) * scale[:, None]
        mix = torch.cat((source.theta.weight.flatten(1), source.proj.weight.flatten(1)))
        mix_bias = torch.cat((conv_bias(source.theta), conv_bias(source.proj)))
        position = torch.arange(e, device=mix.device)
        if order is not None:
            both = torch.cat((order, order + e))
            mix, mix_bias, proj_out = mix.index_select(0, both), mix_bias.index_select(0, both), proj_out[:, order]
            position = torch.empty_like(order).scatter_(0, order, position)
        position = position[: source.theta.in_channels]
        _buffers(
            self,
            mix=mix,
            mix_bias=mix_bias,
            peak_index=torch.stack((position, position + e), dim=1),
            order=order,
            rotation=rest,
            rotation_factors=factors,
            conv_weight=weight,
            conv_bias=bias,
            crossed=crossed,
            proj_out=proj_out,
            proj_out_bias=conv_bias(source.proj_out) * scale,
        )
        self.gate = SqueezeGate.of(source.attn, order)

    def rotate(self, t: torch.Tensor) -> torch.Tensor:
        """t: [B, H, W, E] tokens in ``order`` -> rotated tokens (as they are if the rotation is
        in the taps)."""
        if self.rotation_factors is None:
            return t
        f = self.rotation_factors.to(t.dtype)
        if self.order is None:  # interleaved pairs: out = t * f0 + (t with neighbours swapped) * f1
            return torch.addcmul(t * f[0], t.unflatten(-1, (-1, 2)).flip(-1).flatten(-2), f[1])
        parts = t.unflatten(-1, (2, -1))  # planar: two contiguous broadcast ops, no swap
        return torch.addcmul(parts[..., :1, :] * f[0], parts[..., 1:, :], f[1]).flatten(-2)

    def conv(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, E, H, W] -> act(conv3x3(x)) [B, E, H, W]."""
        out = F.conv2d(x, self.conv_weight, self.conv_bias, padding=1, groups=self.groups)
        if self.crossed is not None:
            crossed = F.conv2d(x, self.crossed, None, padding=1, groups=self.groups)
            out = out + crossed.roll(out.shape[1] // 2, 1)
        return out if self.act is None else self.act(out)

    def _rows(self, x: torch.Tensor) -> int:
        """Rows per tile: all rows off the CPU, without ``tile_rows`` or for small maps."""
        b, _, h, w = x.shape
        row = b * w * self.mix.shape[0] // 2
        if not self.tile_rows or x.device.type != "cpu" or row * h < TILE_MIN_COUNT * TILE_ELEMENTS:
            return h
        return max(TILE_MIN_ROWS, TILE_ELEMENTS // row)

    def _mix(self, t: torch.Tensor) -> torch.Tensor:
        """t: [B, h, W, C] -> w * gelu(theta) + w[m] * gelu(theta[m]): [B, h, W, E] in ``order``."""
        e = self.mix.shape[0] // 2
        index = t.max(dim=-1).indices  # [B, h, W]
        both = F.linear(t, self.mix, self.mix_bias)
        peak = both.gather(-1, self.peak_index[index])  # [B, h, W, 2]
        return torch.addcmul(F.gelu(peak[..., :1]) * peak[..., 1:], F.gelu(both[..., :e]), both[..., e:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C, H, W] channels_last -> out_scale * CMixer(x): [B, C, H, W].

        Up to the squeeze-excite the map is computed ``_rows`` image rows at a time, each tile
        with one halo row above and below for the 3x3 conv."""
        t = tokens(x)
        h, rows = t.shape[1], self._rows(x)
        tiles = []
        for top in range(0, h, rows):
            bottom = min(top + rows, h)
            first, last = max(top - 1, 0), min(bottom + 1, h)
            feat = self.conv(maps(self.rotate(self._mix(t[:, first:last]))))
            tiles.append(tokens(feat)[:, top - first : bottom - first])
        if len(tiles) == 1:
            pooled = tiles[0].mean((1, 2))
        else:
            pooled = torch.stack([tile.sum((1, 2)) for tile in tiles]).sum(0) / (h * t.shape[2])
        gate = self.gate(pooled)
        out = [gated_projection(tile, self.proj_out, self.proj_out_bias, gate) for tile in tiles]
        return out[0] if len(out) == 1 else torch.cat(out, dim=2)


class InferenceBlock(nn.Module):
    """``Block`` for inference: no drop path, layer scales in the mixers."""

    compile_unit: ClassVar[bool] = True  # rtdetr_spartan.nn.compile: the repeated unit

    def __init__(self, source: Block, tile_rows: bool = True) -> None:
        super().__init__()
        self.norm_1 = copy.deepcopy(source.norm_1)
        self.norm_2 = copy.deepcopy(source.norm_2)
        self.smixer = InferenceSMixer(source.smixer, source.scale_1)
        self.cmixer = InferenceCMixer(source.cmixer, source.scale_2, tile_rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C, H, W] channels_last -> [B, C, H, W] channels_last."""
        x = x + self.smixer(self.norm_1(x))
        return x + self.cmixer(self.norm_2(x))


def _converted(module: nn.Module, tile_rows: bool) -> nn.Module | None:
    """``module``'s inference form (frozen), or None when it has none."""
    if isinstance(module, Block):
        return InferenceBlock(module, tile_rows).eval().requires_grad_(False)
    if isinstance(module, ConvNormAct):
        return FusedConvAct.fuse(module).eval().requires_grad_(False)
    return None


def _replace(module: nn.Module, tile_rows: bool) -> None:
    for name, child in module.named_children():
        converted = _converted(child, tile_rows)
        if converted is None:
            _replace(child, tile_rows)
        else:
            setattr(module, name, converted)


@torch.no_grad()
def convert_in_place(model: nn.Module, *, tile_rows: bool = True) -> nn.Module:
    """Replace every SpaRTAN ``Block`` and ``ConvNormAct`` below ``model`` by its inference form,
    in place (RT-DETR's ``deploy()`` / ``convert_to_deploy`` convention); returns ``model``, in
    eval mode. ``model`` itself must not be a ``Block`` or ``ConvNormAct`` (it cannot replace
    itself: use :func:`convert_for_inference`). Afterwards ``model.state_dict()`` is in the
    inference layout: save training weights before converting."""
    model.eval()
    _replace(model, tile_rows)
    return model


@torch.no_grad()
def convert_for_inference(model: nn.Module, *, tile_rows: bool = True) -> nn.Module:
    """A copy of ``model`` in eval mode with every SpaRTAN ``Block`` and ``ConvNormAct`` in
    it replaced by its inference form (``model`` may be a SpaRTAN, a detector holding one, or
    any module; other layers are copied as they are). Inference only: the converted layers
    hold no trainable parameters. ``tile_rows``: process large CMixer maps in row tiles on the
    CPU. A second conversion of a converted model changes nothing.
    """
    converted = copy.deepcopy(model).eval()
    whole = _converted(converted, tile_rows)
    if whole is not None:
        return whole
    return convert_in_place(converted, tile_rows=tile_rows)
