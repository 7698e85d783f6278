# Follows the design of SpaRTAN (henry-pay/SpaRTAN, Apache-2.0).
"""SpaRTAN's eager inference form, what ``Block.reparameterize()`` / ``ConvNormAct.reparameterize()``
return (``rtdetr_spartan.nn.reparameterize.reparameterize_model`` applies them, as timm's
``reparameterize_model``): the canonical math (``spartan_layers``) computed faster, for CPU and
GPU inference. It calls the canonical functions and modules (``SqueezeExcite``,
``GatedProjection``, ``pixel_mix``, ``pair_matrix``, ``fold_rotation``, ``fold_batch_norm``) on
precomputed tensors; an inference block makes its ONNX export form (``spartan_export``) from
those tensors, passed explicitly.

What the conversion does, once (all exact up to float rounding):
  * every BatchNorm (eval statistics, or frozen) is folded into the conv before it;
  * the layer scales and the squeeze-excite layers are in the output projections' form; theta
    and proj are one linear layer; the SMixer's two squeeze-excites one block-diagonal pair:
    about 45 ops per block instead of 90, which is what limits a GPU at small batches;
  * the CMixer's E channels between its 1x1 convs are in "planar" order (real parts first), so
    that the rotation is cheap. Two conv plans: with a depthwise conv the rotation is two
    contiguous ops on the activations; with a grouped conv the rotation goes into the taps and
    the conv runs as two convs with groups of half the size, "direct" (each half map from
    itself) and "crossed" (from the other half; oneDNN's 2-channel grouped conv is about twice
    as slow as the two depthwise convs of SpaRTAN-T). Groups of odd size, whose pairs straddle
    groups, are merged in twos first (zero taps between them);
  * on the CPU, large CMixer maps run in row tiles: temporaries stay in cache and the allocator
    does not return and re-fault memory on every block.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, ClassVar, TypeVar, cast

import torch
import torch.nn.functional as F
from torch import nn

from rtdetr_spartan.nn.backbones.spartan_export import ExportBlock, ExportCMixer, ExportSMixer
from rtdetr_spartan.nn.backbones.spartan_layers import (
    Block,
    CMixer,
    ConvNormAct,
    GatedProjection,
    SMixer,
    SqueezeExcite,
    fold_rotation,
    maps,
    pair_matrix,
    pixel_mix,
    tokens,
)
from rtdetr_spartan.nn.common import fold_batch_norm

if TYPE_CHECKING:
    from rtdetr_spartan.nn.reparameterize import ExportForm

__all__ = ["FusedConvAct", "InferenceBlock", "InferenceCMixer", "InferenceSMixer", "planar_order", "planar_taps"]

# CPU tiles: a CMixer map of at least TILE_MIN_COUNT * TILE_ELEMENTS elements is processed in row
# tiles of about TILE_ELEMENTS (fp32: 1 MiB per temporary, which stays in L2) and at least
# TILE_MIN_ROWS rows (each tile recomputes a halo row on either side for the 3x3 conv).
TILE_ELEMENTS = 1 << 18
TILE_MIN_ROWS = 8
TILE_MIN_COUNT = 4

M = TypeVar("M", bound=nn.Module)


def _holding(build: Callable[[], M], **tensors: torch.Tensor) -> M:
    """``build()``'s module (built without initializing it) holding ``tensors`` as frozen
    parameters, by dotted name (``squeeze.weight``)."""
    with torch.device("meta"):
        module = build()
    for name, tensor in tensors.items():
        owner, _, attr = name.rpartition(".")
        setattr(
            module.get_submodule(owner),
            attr,
            nn.Parameter(tensor.detach().clone(memory_format=torch.contiguous_format), requires_grad=False),
        )
    return module


def _excite(parts: Sequence[SqueezeExcite], order: torch.Tensor | None = None) -> SqueezeExcite:
    """The squeeze-excites ``parts`` (of consecutive channel groups) as one, block-diagonal, with
    the channels in ``order`` (None: as they are)."""
    w1 = torch.block_diag(*(se.squeeze.weight.flatten(1) for se in parts))
    w2 = torch.block_diag(*(se.expand.weight.flatten(1) for se in parts))
    b1, b2 = (torch.cat([_conv_bias(getattr(se, name)) for se in parts]) for name in ("squeeze", "expand"))
    if order is not None:
        w1, w2, b2 = w1[:, order], w2[order], b2[order]
    return _holding(
        lambda: SqueezeExcite(*w1.shape[::-1]),
        **{"squeeze.weight": w1[:, :, None, None], "squeeze.bias": b1},
        **{"expand.weight": w2[:, :, None, None], "expand.bias": b2},
    )


def _projection(source: GatedProjection, out_scale: torch.Tensor, order: torch.Tensor | None = None) -> GatedProjection:
    """``source`` with the layer scale ``out_scale`` [1, C, 1, 1] folded in and its input
    channels in ``order`` (None: as they are)."""
    scale = out_scale.view(-1, 1, 1, 1)
    weight = source.weight * scale if order is None else (source.weight * scale)[:, order]
    return _holding(
        lambda: GatedProjection(weight.shape[1], weight.shape[0]),
        weight=weight,
        bias=_conv_bias(source) * scale.flatten(),
    )


def _conv_bias(conv: nn.Conv2d) -> torch.Tensor:
    assert conv.bias is not None
    return conv.bias


class FusedConvAct(nn.Module):
    """A ``ConvNormAct`` with its norm folded into the conv: act(conv(x)), the conv with a bias."""

    def __init__(self, module: ConvNormAct) -> None:
        """``module`` with its norm folded in (frozen, eval mode); ``module`` stays as it is."""
        super().__init__()
        src, w = module.conv, module.conv.weight
        w, b = (w, w.new_zeros(w.shape[0])) if isinstance(module.norm, nn.Identity) else fold_batch_norm(module.norm, w)
        shape = (src.in_channels, src.out_channels, src.kernel_size, src.stride, src.padding, src.dilation, src.groups)
        self.conv = _holding(lambda: nn.Conv2d(*shape), weight=w, bias=b)  # type: ignore[arg-type]  # src's own tuples
        self.act = module.act
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, in, H, W] -> [B, out, H', W']."""
        x = self.conv(x)
        return x if self.act is None else self.act(x)


class InferenceSMixer(nn.Module):
    """``SMixer`` with its layer scale, for inference (see the module docstring): proj_in [C/2, C]
    and its bias [C/2], gamma [C/2], the fused convs, the two squeeze-excites as one
    (block-diagonal) and the output projection with the layer scale in."""

    proj_in: torch.Tensor
    proj_in_bias: torch.Tensor
    gamma: torch.Tensor

    def __init__(self, source: SMixer, out_scale: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("proj_in", source.proj_in.weight.detach().flatten(1).clone())
        self.register_buffer("proj_in_bias", _conv_bias(source.proj_in).detach().clone())
        self.register_buffer("gamma", source.gamma.detach().view(-1).clone())
        self.h_conv = FusedConvAct(source.h_conv)
        self.l_conv = nn.Sequential(*(FusedConvAct(cast(ConvNormAct, m)) for m in source.l_conv))
        self.gate = _excite((source.h_attn, source.l_attn))
        self.proj_out = _projection(source.proj_out, out_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C, H, W] channels_last -> out_scale * SMixer(x): [B, C, H, W]."""
        y = F.linear(tokens(x), self.proj_in)  # bias enters the shift
        shift = torch.addcmul(self.proj_in_bias, y.mean((1, 2), keepdim=True), -self.gamma)
        y = maps(torch.addcmul(shift, y, 1.0 + self.gamma))
        both = torch.cat((tokens(self.h_conv(y)), tokens(self.l_conv(y))), dim=-1)
        return self.proj_out(both, self.gate(both.mean((1, 2))))

    def export_form(self, norm: nn.GroupNorm, fixed_shapes: bool) -> ExportSMixer:
        """The export form, with the affine transform of the GroupNorm before it folded in."""
        convs = (self.h_conv, self.l_conv)
        return ExportSMixer(
            self.proj_in, self.proj_in_bias, self.gamma, convs, self.gate, self.proj_out, norm, fixed_shapes
        )


def planar_order(channels: int) -> torch.Tensor:
    """Channel order with the pairs' first members (real parts) first: 0, 2, 4, ..., 1, 3, ..."""
    return torch.cat((torch.arange(0, channels, 2), torch.arange(1, channels, 2)))


def _pair_groups(weight: torch.Tensor) -> torch.Tensor:
    """A grouped conv's weight [E, E / groups, k, k] as the same conv with groups that hold
    whole channel pairs: groups of odd size (a depthwise conv's single channels included) merged
    in twos, with zero taps between the merged groups."""
    e, per_group, kh, kw = weight.shape
    if per_group % 2 == 0:
        return weight
    w = weight.view(-1, 2, per_group, per_group, kh, kw)  # [merged group, member, out, in, k, k]
    out = weight.new_zeros(w.shape[0], 2, per_group, 2, per_group, kh, kw)
    for member in (0, 1):
        out[:, member, :, member] = w[:, member]
    return out.view(e, 2 * per_group, kh, kw)


def planar_taps(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A conv whose groups hold whole channel pairs (weight [E, p, k, k], p even), on planar
    maps: taps (direct, crossed), each [E, p/2, k, k] in planar row order for a conv with groups
    of p/2 channels; output half j is conv(half j, direct) + conv(half 1 - j, crossed)."""
    e, per_group, kh, kw = weight.shape
    q = per_group // 2
    w = weight.view(e // per_group, q, 2, q, 2, kh, kw)  # [group, out pair, out part, in pair, in part]
    direct = torch.stack([w[:, :, j, :, j] for j in (0, 1)])
    crossed = torch.stack([w[:, :, j, :, 1 - j] for j in (0, 1)])
    return direct.reshape(e, q, kh, kw), crossed.reshape(e, q, kh, kw)


class InferenceCMixer(nn.Module):
    """``CMixer`` with its layer scale, for inference (see the module docstring).

    The E channels between the 1x1 convs are in planar order. ``mix`` is theta and proj as one
    linear layer; ``rotation`` the planar rotation factors (depthwise plan; None: the rotation
    is in the taps); ``conv_weight`` the 3x3 conv (norm folded in), with groups of
    ``group_size`` = conv_weight.shape[1] channels, and ``crossed`` its taps from the other
    half map (grouped plan).
    """

    mix: torch.Tensor  # [2E, C]: theta rows, then proj rows, each planar
    mix_bias: torch.Tensor  # [2E]
    peak_index: torch.Tensor  # [C, 2]: positions of input channel c's theta and proj outputs
    rotation: torch.Tensor | None  # [2 (input half), 2 (output half), E/2]
    conv_weight: torch.Tensor  # [E, group_size, 3, 3]
    conv_bias: torch.Tensor  # [E]
    crossed: torch.Tensor | None  # [E, group_size, 3, 3], rows in the order of the half they read

    def __init__(self, source: CMixer, out_scale: torch.Tensor) -> None:
        super().__init__()
        conv = source.conv.conv
        e, c, rotation = conv.in_channels, source.theta.in_channels, source.complex.view(-1, 2)
        order = planar_order(e).to(rotation.device)
        weight, bias = fold_batch_norm(source.conv.norm, conv.weight)
        factors, crossed = None, None
        if conv.groups == e:  # depthwise: rotation on the activations, [input half, output half, pair]
            factors, weight = pair_matrix(rotation).permute(2, 1, 0), weight[order]
        else:
            weight, crossed = planar_taps(fold_rotation(_pair_groups(weight), rotation))
            crossed = torch.cat(crossed.chunk(2)[::-1])  # rows by the half they read
        both = torch.cat((order, order + e))
        mix = torch.cat((source.theta.weight.flatten(1), source.proj.weight.flatten(1)))[both]
        mix_bias = torch.cat((_conv_bias(source.theta), _conv_bias(source.proj)))[both]
        position = torch.empty_like(order).scatter_(0, order, torch.arange(e, device=order.device))[:c]
        tensors: dict[str, torch.Tensor | None] = {"mix": mix, "mix_bias": mix_bias, "conv_bias": bias[order]}
        tensors.update(peak_index=torch.stack((position, position + e), dim=1), rotation=factors)
        for name, tensor in {**tensors, "conv_weight": weight, "crossed": crossed}.items():
            self.register_buffer(
                name, None if tensor is None else tensor.detach().clone(memory_format=torch.contiguous_format)
            )
        self.act = source.conv.act
        self.gate = _excite((source.attn,), order)
        self.proj_out = _projection(source.proj_out, out_scale, order)

    def rotate(self, t: torch.Tensor) -> torch.Tensor:
        """t: [B, H, W, E] planar tokens -> rotated tokens (as they are if the rotation is in the
        taps): two contiguous broadcast ops, no swap."""
        if self.rotation is None:
            return t
        f = self.rotation.to(t.dtype)
        parts = t.unflatten(-1, (2, -1))
        return torch.addcmul(parts[..., :1, :] * f[0], parts[..., 1:, :], f[1]).flatten(-2)

    def conv(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, E, H, W] -> act(conv3x3(x)) [B, E, H, W]."""
        groups = x.shape[1] // self.conv_weight.shape[1]
        out = F.conv2d(x, self.conv_weight, self.conv_bias, padding=1, groups=groups)
        if self.crossed is not None:
            crossed = F.conv2d(x, self.crossed, None, padding=1, groups=groups)
            out = out + crossed.roll(out.shape[1] // 2, 1)
        return out if self.act is None else self.act(out)

    def _rows(self, x: torch.Tensor) -> int:
        """Rows per tile: all rows off the CPU and for small maps."""
        b, _, h, w = x.shape
        row = b * w * self.mix.shape[0] // 2
        if x.device.type != "cpu" or row * h < TILE_MIN_COUNT * TILE_ELEMENTS:
            return h
        return max(TILE_MIN_ROWS, TILE_ELEMENTS // row)

    def _mix(self, t: torch.Tensor) -> torch.Tensor:
        """t: [B, h, W, C] -> w * gelu(theta) + w[m] * gelu(theta[m]): [B, h, W, E] planar."""
        e = self.mix.shape[0] // 2
        index = t.max(dim=-1).indices  # [B, h, W]
        both = F.linear(t, self.mix, self.mix_bias)
        peak = both.gather(-1, self.peak_index[index])  # [B, h, W, 2]
        return pixel_mix(F.gelu(both[..., :e]), both[..., e:], F.gelu(peak[..., :1]), peak[..., 1:])

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
        out = [self.proj_out(tile, gate) for tile in tiles]
        return out[0] if len(out) == 1 else torch.cat(out, dim=2)

    def export_form(self, fixed_shapes: bool) -> ExportCMixer:
        """The export form: rotation in the taps, crossed taps by the half they write."""
        direct, crossed = self.conv_weight, self.crossed
        if crossed is None:  # depthwise: the taps take the planar rotation factors
            f = cast(torch.Tensor, self.rotation)
            direct, crossed = (
                direct * torch.cat((f[0, 0], f[1, 1])).view(-1, 1, 1, 1),
                direct * torch.cat((f[1, 0], f[0, 1])).view(-1, 1, 1, 1),
            )
        else:
            crossed = torch.cat(crossed.chunk(2)[::-1])
        return ExportCMixer(
            self.mix, self.mix_bias, (direct, crossed, self.conv_bias), self.gate, self.proj_out, fixed_shapes
        )


class InferenceBlock(nn.Module):
    """``Block`` for inference: no drop path, layer scales in the mixers."""

    compile_unit: ClassVar[bool] = True  # rtdetr_spartan.nn.compile: the repeated unit

    def __init__(self, source: Block) -> None:
        """``source``'s inference form (frozen, eval mode); ``source`` stays as it is."""
        super().__init__()
        self.norm_1, self.norm_2 = copy.deepcopy(source.norm_1), copy.deepcopy(source.norm_2)
        self.smixer = InferenceSMixer(source.smixer, source.scale_1)
        self.cmixer = InferenceCMixer(source.cmixer, source.scale_2)
        self.eval().requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C, H, W] channels_last -> [B, C, H, W] channels_last."""
        x = x + self.smixer(self.norm_1(x))
        return x + self.cmixer(self.norm_2(x))

    def reparameterize(self, export: ExportForm | None = None) -> nn.Module:
        """Itself (nothing left to fold), or with ``export`` its ONNX export form."""
        if export is None:
            return self
        smixer = self.smixer.export_form(self.norm_1, export.fixed_shapes)
        cmixer = self.cmixer.export_form(export.fixed_shapes)
        return ExportBlock(smixer, cmixer, self.norm_1, self.norm_2).eval()
