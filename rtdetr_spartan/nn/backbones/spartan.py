# Follows the design of SpaRTAN (henry-pay/SpaRTAN, Apache-2.0).
"""SpaRTAN: the CNN of Pay et al. (IJCNN 2025) as ImageNet classifier and detection backbone.

One module serves both uses with the reference classifier's state-dict names: the stem is
``conv.0`` / ``conv.1``, the blocks and the downsample layers of all stages form one flat
``layers`` sequence, and the classifier adds ``linear``. Reference checkpoints load unchanged.

Block (per stage, width C):  x += DropPath(scale_1 * SMixer(GN(x)));  x += DropPath(scale_2 *
CMixer(GN(x))), GN = GroupNorm with one group. The CMixer's complex channel rotation is written
in real arithmetic on (re, im) channel pairs, so no complex dtype appears in ``forward``: the model
exports to ONNX and runs under autocast like any CNN.

Speed (CPU, eager): the network runs in channels_last memory format, where oneDNN's depthwise and
grouped convolutions are an order of magnitude faster than in NCHW; the CMixer's two 1x1 input
projections run as one convolution, and where the 3x3 convolution after the rotation has groups
that hold whole (re, im) pairs, the rotation is folded into its weights instead of touching the
activations.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FrozenBatchNorm2d, StochasticDepth

from rtdetr_spartan.core import register
from rtdetr_spartan.nn.common import freeze_batch_norm

__all__ = ["SpaRTAN", "SpaRTANClassifier", "SpaRTANVariant", "VARIANTS", "rotate_pairs",
           "load_pretrained"]

logger = logging.getLogger(__name__)

NORM_EPS = 1e-6  # the reference uses eps 1e-6 for every BatchNorm and GroupNorm
# CPU inference tiles CMixer maps larger than this many elements per tile (fp32: 1 MiB)
TILE_ELEMENTS = 1 << 18
TILE_MIN_ROWS = 8


@dataclass(frozen=True)
class SpaRTANVariant:
    """Network shape: per stage the number of blocks, the width and the CMixer expansion."""

    depths: tuple[int, ...]
    widths: tuple[int, ...]
    expand_ratios: tuple[int, ...]
    drop_path_rate: float


VARIANTS: dict[str, SpaRTANVariant] = {
    # The paper's SpaRTAN-T (reference config spartan.yaml): 3.82 M parameters as classifier.
    "T": SpaRTANVariant(depths=(3, 3, 12, 2), widths=(32, 64, 128, 256),
                        expand_ratios=(4, 4, 2, 2), drop_path_rate=0.1),
}


def rotate_pairs(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Multiply the channel pairs (2k, 2k+1) of the last dim, read as complex numbers re + i im,
    by ``rotation[k]`` = (re_k, im_k), in real arithmetic.

    x: [..., E]; rotation: [E/2, 2] -> [..., E] with
    out[2k] = re_k x[2k] - im_k x[2k+1] and out[2k+1] = im_k x[2k] + re_k x[2k+1].
    """
    e = x.shape[-1]
    same = rotation[:, 0].repeat_interleave(2)                          # re_0, re_0, re_1, ...
    cross = (rotation[:, 1:2] * rotation.new_tensor([-1.0, 1.0])).reshape(e)  # -im_0, im_0, ...
    swapped = x.unflatten(-1, (e // 2, 2)).flip(-1).flatten(-2)
    return torch.addcmul(x * same, swapped, cross)


def planar_order(channels: int) -> torch.Tensor:
    """Channel order with the pairs' first members (real parts) first: 0, 2, 4, ..., 1, 3, ..."""
    return torch.cat((torch.arange(0, channels, 2), torch.arange(1, channels, 2)))


def rotate_planar(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """``rotate_pairs`` for channels in ``planar_order``: x[..., :E/2] holds the real parts,
    x[..., E/2:] the imaginary parts. x: [..., E] -> [..., E] in the same order.

    Unlike the interleaved form this needs no channel swap: two contiguous broadcast ops.
    """
    parts = x.unflatten(-1, (2, x.shape[-1] // 2))                      # [..., 2, E/2]
    re, im = rotation[:, 0], rotation[:, 1]
    out = torch.addcmul(parts[..., :1, :] * torch.stack((re, im)), parts[..., 1:, :],
                        torch.stack((-im, re)))
    return out.flatten(-2)


def _fold_rotation(weight: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Weights W' with conv(x, W') == conv(rotate_pairs(x), W) for a grouped conv whose groups
    hold whole channel pairs. weight: [O, G_in, k, k] (G_in even); rotation: [E/2, 2]."""
    out_ch, per_group, kh, kw = weight.shape
    groups = rotation.shape[0] * 2 // per_group
    rot = rotation.view(groups, 1, per_group // 2, 2, 1, 1)
    re, im = rot[:, :, :, :1], rot[:, :, :, 1:]
    w = weight.view(groups, out_ch // groups, per_group // 2, 2, kh, kw)
    w_re, w_im = w[:, :, :, :1], w[:, :, :, 1:]        # taps reading out[2k] and out[2k+1]
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


def _with_ones(t: torch.Tensor) -> torch.Tensor:
    """[..., C] -> [..., C + 1]: a matmul with [W | b] then adds the bias inside the GEMM,
    which on CPU is cheaper than the separate bias pass of F.linear."""
    return F.pad(t, (0, 1), value=1.0)


def _weight_bias(conv: nn.Conv2d) -> torch.Tensor:
    """A 1x1 conv as the [in + 1, out] matrix [W | b]^T for ``_with_ones`` inputs."""
    return torch.cat((conv.weight.flatten(1), conv.bias[:, None]), dim=1).t()


def _project(tokens: torch.Tensor, gate: torch.Tensor, proj: nn.Conv2d,
             out_scale: torch.Tensor | None, order: torch.Tensor | None = None) -> torch.Tensor:
    """out_scale * proj(tokens * gate) with gate and out_scale folded into per-sample weights,
    which saves a pass over the (largest) activations.

    tokens: [B, H, W, E] with channels in ``order`` (None: natural); gate: [B, E] in the same
    order -> [B, C_out, H, W] (channels_last).
    """
    b, h, w, _ = tokens.shape
    weight = proj.weight.flatten(1)
    if order is not None:
        weight = weight[:, order]
    weight = weight[None] * gate[:, None, :]                            # [B, C_out, E]
    bias = proj.bias
    if out_scale is not None:
        weight = weight * out_scale.view(1, -1, 1)
        bias = bias * out_scale.view(-1)
    out = torch.baddbmm(bias, tokens.reshape(b, h * w, -1), weight.transpose(1, 2))
    return _maps(out.view(b, h, w, -1))


def _inference_affine(norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(scale, bias) of a batch norm that normalizes with running statistics, else None."""
    if isinstance(norm, FrozenBatchNorm2d) or (
            isinstance(norm, (nn.BatchNorm2d, nn.SyncBatchNorm)) and not norm.training
            and norm.track_running_stats):
        scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
        return scale, norm.bias - norm.running_mean * scale
    return None


class ConvNormAct(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d (eps 1e-6) or nothing -> activation or nothing.

    A BatchNorm that normalizes with running statistics (eval mode, or frozen) is folded into
    the conv on the fly, saving a pass over the output; ``fuse_norm`` folds it for good.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1,
                 padding: int = 0, dilation: int = 1, groups: int = 1, norm: bool = True,
                 act: Callable[[torch.Tensor], torch.Tensor] | None = F.gelu) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation,
                              groups, bias=False)
        self.norm = nn.BatchNorm2d(out_channels, eps=NORM_EPS) if norm else nn.Identity()
        self.act = act

    def uses_batch_statistics(self) -> bool:
        return _inference_affine(self.norm) is None and not isinstance(self.norm, nn.Identity)

    def folded(self, weight: torch.Tensor | None = None,
               order: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
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
            weight, bias = weight[order], (None if bias is None else bias[order])
        return weight, bias

    def forward(self, x: torch.Tensor, weight: torch.Tensor | None = None,
                order: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, in, H, W] -> [B, out, H', W']; ``weight`` and ``order`` as in ``folded``."""
        conv = self.conv
        if self.uses_batch_statistics():
            if order is not None:
                raise RuntimeError("a channel order needs a norm without batch statistics")
            x = conv(x) if weight is None else F.conv2d(
                x, weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
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
        fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                          conv.padding, conv.dilation, conv.groups, bias=True).to(conv.weight)
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

    def gate(self, pooled: torch.Tensor, order: torch.Tensor | None = None) -> torch.Tensor:
        """pooled: [B, C] spatial means, channels in ``order`` (None: natural) -> [B, C]."""
        w_in, w_out = self.squeeze.weight.flatten(1), self.expand.weight.flatten(1)
        b_out = self.expand.bias
        if order is not None:
            w_in, w_out, b_out = w_in[:, order], w_out[order], b_out[order]
        hidden = F.relu(F.linear(pooled, w_in, self.squeeze.bias))
        return torch.sigmoid(F.linear(hidden, w_out, b_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C, H, W] -> [B, C, H, W]."""
        return x * self.gate(x.mean((2, 3)))[:, :, None, None]


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

    def forward(self, x: torch.Tensor, out_scale: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, C, H, W] -> [B, C, H, W], multiplied by ``out_scale`` [1, C, 1, 1] if given."""
        y = _tokens(x) @ self.proj_in.weight.flatten(1).t()            # bias enters below
        gamma = self.gamma.view(-1)
        # y + b + gamma (y + b - mean(y + b)) == (1 + gamma) y + (b - gamma mean(y)): one pass
        shift = self.proj_in.bias - gamma * y.mean((1, 2), keepdim=True)
        y = _maps(torch.addcmul(shift, y, 1.0 + gamma))
        short = _tokens(self.h_conv(y))
        long = _tokens(self.l_conv(y))
        gate = torch.cat((self.h_attn.gate(short.mean((1, 2))),
                          self.l_attn.gate(long.mean((1, 2)))), dim=-1)
        return _project(torch.cat((short, long), dim=-1), gate, self.proj_out, out_scale)


class CMixer(nn.Module):
    """Channel mixer on E = r*C channels.

    feat = w * theta + w[m] * theta[m], theta = GELU(1x1(x)), w = 1x1(x), m = argmax_c x per
    pixel; channel pairs rotated by the learned complex vector ``complex`` ([1, 1, 1, E/2, 2] as
    (re, im), the reference's layout); 3x3 conv + BN + GELU (depthwise, or C groups when
    ``grouped``), squeeze-excite to C/4 and 1x1 back to C.

    How the rotation is applied (all equal to the reference up to float rounding):
      * conv groups hold whole (re, im) pairs: folded into the conv weights, free;
      * depthwise conv, BN without batch statistics: the E channels live in ``planar_order``
        between the two 1x1 convs, where the rotation is two contiguous ops;
      * depthwise conv in training (batch statistics): in place, with a channel swap.
    Inference on CPU runs large maps in row tiles (see ``_forward_tiled``).
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
        self._fold = (neck // self.conv.conv.groups) % 2 == 0
        self.register_buffer("_planar", planar_order(neck), persistent=False)

    def _mix(self, tokens: torch.Tensor, theta_w: torch.Tensor, proj_w: torch.Tensor,
             planar: bool) -> torch.Tensor:
        """tokens: [B, H, W, C] -> feat [B, H, W, E] before the rotation.

        theta_w / proj_w: the 1x1 convs as [C + 1, E] matrices, columns in planar order if
        ``planar``."""
        index = tokens.argmax(dim=-1, keepdim=True)                    # [B, H, W, 1]
        if planar:
            index = index % 2 * (theta_w.shape[1] // 2) + index // 2   # its planar position
        augmented = _with_ones(tokens)
        theta, weight = augmented @ theta_w, augmented @ proj_w
        peak = F.gelu(theta.gather(-1, index)) * weight.gather(-1, index)
        return torch.addcmul(peak, F.gelu(theta), weight)

    def _plan(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(channel order, replacement conv weight) for the current mode."""
        if self._fold:
            return None, _fold_rotation(self.conv.conv.weight, self.complex.view(-1, 2))
        if self.conv.uses_batch_statistics():
            return None, None
        return self._planar, None

    def _tile_rows(self, x: torch.Tensor) -> int | None:
        """Rows per tile for CPU inference on large maps, else None (one piece)."""
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or self.theta.weight.requires_grad)
        if (needs_grad or x.device.type != "cpu" or self.conv.uses_batch_statistics()
                or torch.jit.is_tracing() or torch.jit.is_scripting()
                or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()):
            return None
        b, _, h, w = x.shape
        row = b * w * self.theta.out_channels
        if row * h < 4 * TILE_ELEMENTS:
            return None
        return max(TILE_MIN_ROWS, TILE_ELEMENTS // row)

    def forward(self, x: torch.Tensor, out_scale: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, C, H, W] -> [B, C, H, W], multiplied by ``out_scale`` [1, C, 1, 1] if given."""
        order, conv_weight = self._plan()
        rows = self._tile_rows(x)
        if rows is not None:
            return self._forward_tiled(x, out_scale, order, conv_weight, rows)
        feat = self._mix(_tokens(x), *self._projections(order), planar=order is not None)
        feat = self._rotate(feat, order)
        feat = _tokens(self.conv(_maps(feat), conv_weight, order))
        gate = self.attn.gate(feat.mean((1, 2)), order)
        return _project(feat, gate, self.proj_out, out_scale, order)

    def _projections(self, order: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        theta_w, proj_w = _weight_bias(self.theta), _weight_bias(self.proj)
        if order is not None:
            theta_w, proj_w = theta_w[:, order], proj_w[:, order]
        return theta_w, proj_w

    def _rotate(self, feat: torch.Tensor, order: torch.Tensor | None) -> torch.Tensor:
        # The reference rotates in float32 even under autocast; the real form keeps the
        # activations' dtype, so autocast and ONNX export need no special case.
        if self._fold:
            return feat
        rotation = self.complex.view(-1, 2).to(feat.dtype)
        return rotate_planar(feat, rotation) if order is not None else rotate_pairs(feat, rotation)

    def _forward_tiled(self, x: torch.Tensor, out_scale: torch.Tensor | None,
                       order: torch.Tensor | None, conv_weight: torch.Tensor | None,
                       rows: int) -> torch.Tensor:
        """``forward`` computed ``rows`` image rows at a time up to the squeeze-excite.

        The per-pixel part and the 3x3 conv (one halo row above and below) of each tile stay in
        cache, and tile-sized temporaries are reused by the allocator; on CPU this cuts the
        memory traffic and page faults that dominate the big early-stage maps.
        """
        tokens = _tokens(x)
        b, h, w, _ = tokens.shape
        theta_w, proj_w = self._projections(order)
        weight, bias = self.conv.folded(conv_weight, order)
        conv = self.conv.conv
        tiles = []
        pooled = tokens.new_zeros(b, weight.shape[0])
        for top in range(0, h, rows):
            bottom = min(top + rows, h)
            first, last = max(top - 1, 0), min(bottom + 1, h)
            feat = self._rotate(self._mix(tokens[:, first:last], theta_w, proj_w,
                                          order is not None), order)
            feat = F.conv2d(_maps(feat), weight, bias, conv.stride, conv.padding, conv.dilation,
                            conv.groups)
            feat = _tokens(self.conv.act(feat))[:, top - first:bottom - first]
            tiles.append(feat)
            pooled += feat.sum((1, 2))
        gate = self.attn.gate(pooled / (h * w), order)
        out = [_project(tile, gate, self.proj_out, out_scale, order) for tile in tiles]
        return torch.cat(out, dim=2)


class Block(nn.Module):
    """Pre-norm residual block: SMixer then CMixer, each scaled per channel and drop-pathed."""

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C, H, W] -> [B, C, H, W]."""
        x = x + self.drop_path_1(self.smixer(self.norm_1(x), self.scale_1))
        return x + self.drop_path_2(self.cmixer(self.norm_2(x), self.scale_2))


def _build_layers(spec: SpaRTANVariant, drop_path_rate: float) -> tuple[list[nn.Module], list[int]]:
    """The flat layer list (blocks, with a 2x2 stride-2 downsample between stages) and, per
    stage, the index of its last layer. Stages in the second half use grouped convolutions."""
    layers: list[nn.Module] = []
    stage_ends: list[int] = []
    total, block_idx = sum(spec.depths), 0
    num_stages = len(spec.depths)
    for stage, (depth, width) in enumerate(zip(spec.depths, spec.widths)):
        grouped = stage >= num_stages // 2
        for _ in range(depth):
            # the reference's schedule: block i of n gets rate * i / n (the last gets < rate)
            drop = drop_path_rate * block_idx / total
            layers.append(Block(width, spec.expand_ratios[stage], grouped, drop))
            block_idx += 1
        stage_ends.append(len(layers) - 1)
        if stage < num_stages - 1:
            layers.append(ConvNormAct(width, spec.widths[stage + 1], 2, stride=2, act=F.silu))
    return layers, stage_ends


def _checkpoint_state_dict(checkpoint: object, path: Path) -> dict[str, torch.Tensor]:
    """The model weights in a checkpoint: EMA weights first, then ``model``, then a bare dict."""
    if isinstance(checkpoint, Mapping):
        ema = checkpoint.get("ema")
        if isinstance(ema, Mapping) and isinstance(ema.get("module"), Mapping):
            return dict(ema["module"])
        for key in ("model", "state_dict"):
            if isinstance(checkpoint.get(key), Mapping):
                return dict(checkpoint[key])
        if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
            return dict(checkpoint)
    raise ValueError(f"{path}: expected a state dict, {{'model': state_dict}} or "
                     f"{{'ema': {{'module': state_dict}}}}, got {type(checkpoint).__name__}"
                     + (f" with keys {sorted(checkpoint)[:8]}" if isinstance(checkpoint, Mapping)
                        else ""))


def load_pretrained(model: nn.Module, path: str | Path) -> int:
    """Load a SpaRTAN classifier checkpoint into ``model`` (a backbone); returns tensors loaded.

    Accepts a bare state dict, ``{'model': sd}`` or ``{'ema': {'module': sd}}`` (EMA preferred),
    strips a ``module.`` (DDP) prefix and drops the classifier head ``linear.*``. Missing,
    unexpected or differently shaped tensors raise a ValueError that names them.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SpaRTAN.pretrained: checkpoint {str(path)!r} does not exist")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = {k.removeprefix("module."): v for k, v in _checkpoint_state_dict(checkpoint, path).items()}
    state = {k: v for k, v in state.items() if not k.startswith("linear.")}
    own = model.state_dict()
    shapes = [f"{k} {tuple(v.shape)} (model {tuple(own[k].shape)})"
              for k, v in state.items() if k in own and v.shape != own[k].shape]
    if shapes:
        raise ValueError(f"{path}: {len(shapes)} tensors differ in shape from the model: "
                         + "; ".join(shapes[:10]))
    # FrozenBatchNorm2d (freeze_norm) has no num_batches_tracked; it drops those on load
    result = model.load_state_dict(state, strict=False)
    unexpected = [k for k in result.unexpected_keys if not k.endswith("num_batches_tracked")]
    if result.missing_keys or unexpected:
        raise ValueError(f"{path}: missing {len(result.missing_keys)} tensors "
                         f"{result.missing_keys[:10]}, unexpected {len(unexpected)} {unexpected[:10]}")
    loaded = len(state) - len(result.unexpected_keys)
    logger.info("SpaRTAN: loaded %d tensors from %s", loaded, path)
    return loaded


def _resolve_pretrained(pretrained: bool | str | Path | None) -> Path | None:
    if pretrained is None or pretrained is False:
        return None
    if pretrained is True or not isinstance(pretrained, (str, Path)) or "://" in str(pretrained):
        raise ValueError(f"SpaRTAN.pretrained={pretrained!r}: expected None/False or the local path "
                         "of a SpaRTAN classifier checkpoint (weights are never downloaded)")
    return Path(pretrained)


@register()
class SpaRTAN(nn.Module):
    """SpaRTAN trunk; as a detection backbone returns the stage outputs in ``return_idx``.

    Args:
        variant: key of ``VARIANTS`` ('T': the paper's SpaRTAN-T).
        return_idx: stages whose outputs ``forward`` returns (0: stride 4 ... 3: stride 32).
        freeze_at: -1 trains everything; k >= 0 freezes the stem and the first k stages
            (a stage includes the downsample layer in front of it).
        freeze_norm: replace every BatchNorm2d by a FrozenBatchNorm2d (the GroupNorms stay).
        pretrained: None/False, or the local path of a classifier checkpoint (head dropped).
        drop_path_rate: stochastic-depth rate of the last block; None: the variant's value.
        channels_last: run in channels_last memory format (outputs are channels_last too); the
            oneDNN CPU kernels for the depthwise/grouped convs are much faster that way.
    """

    def __init__(self, variant: str = "T", return_idx: Sequence[int] = (1, 2, 3),
                 freeze_at: int = -1, freeze_norm: bool = False,
                 pretrained: bool | str | Path | None = None,
                 drop_path_rate: float | None = None, channels_last: bool = True) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"SpaRTAN.variant={variant!r}; expected one of {sorted(VARIANTS)}")
        spec = VARIANTS[variant]
        num_stages = len(spec.depths)
        if not return_idx or any(not 0 <= i < num_stages for i in return_idx):
            raise ValueError(f"SpaRTAN.return_idx={list(return_idx)}; expected indices in "
                             f"0..{num_stages - 1}")
        checkpoint = _resolve_pretrained(pretrained)
        rate = spec.drop_path_rate if drop_path_rate is None else drop_path_rate
        stem = spec.widths[0]
        self.conv = nn.Sequential(
            ConvNormAct(3, stem // 2, 3, stride=2, padding=1),
            ConvNormAct(stem // 2, stem, 3, stride=2, padding=1),
        )
        layers, self._stage_ends = _build_layers(spec, rate)
        self.layers = nn.Sequential(*layers)

        self.variant = variant
        self.channels_last = channels_last
        self.return_idx = sorted(return_idx)
        self.out_channels = [spec.widths[i] for i in self.return_idx]
        self.out_strides = [2 ** (i + 2) for i in self.return_idx]

        if freeze_at >= 0:
            for module in self._stage_modules(min(freeze_at, num_stages)):
                module.requires_grad_(False)
        if freeze_norm:
            freeze_batch_norm(self)
        if checkpoint is not None:
            load_pretrained(self, checkpoint)

    def _stage_modules(self, num: int) -> list[nn.Module]:
        """The stem and the layers of the first ``num`` stages."""
        end = self._stage_ends[num - 1] + 1 if num > 0 else 0
        return [self.conv, *self.layers[:end]]

    def forward_stages(self, x: torch.Tensor, return_idx: Sequence[int]) -> list[torch.Tensor]:
        """x: [B, 3, H, W] (H, W divisible by 32) -> [B, widths[i], H / 2^(i+2), W / 2^(i+2)]
        for each stage i in ``return_idx`` (ascending)."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"SpaRTAN expects input [B, 3, H, W], got {tuple(x.shape)}")
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.conv(x)
        taps = {self._stage_ends[i]: i for i in return_idx}
        outs = []
        for index, layer in enumerate(self.layers[:max(taps) + 1]):
            x = layer(x)
            if index in taps:
                outs.append(x)
        return outs

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: [B, 3, H, W] -> one map per ``return_idx``: [B, out_channels[i], H/s_i, W/s_i]."""
        return self.forward_stages(x, self.return_idx)

    @torch.no_grad()
    def convert_to_deploy(self) -> SpaRTAN:
        """Fold every BatchNorm into the conv before it (eval-mode numerics, faster inference)."""
        for module in self.modules():
            if isinstance(module, ConvNormAct):
                module.fuse_norm()
        return self


@register()
class SpaRTANClassifier(SpaRTAN):
    """SpaRTAN ImageNet classifier: trunk -> global average pool -> ``linear``."""

    __share__ = ["num_classes"]

    def __init__(self, variant: str = "T", num_classes: int = 1000,
                 drop_path_rate: float | None = None, channels_last: bool = True) -> None:
        num_stages = len(VARIANTS[variant].depths) if variant in VARIANTS else 1
        super().__init__(variant, return_idx=(num_stages - 1,), drop_path_rate=drop_path_rate,
                         channels_last=channels_last)
        self.linear = nn.Linear(VARIANTS[variant].widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, 3, H, W] -> logits [B, num_classes]."""
        feat = self.forward_stages(x, self.return_idx)[-1]
        return self.linear(feat.mean((2, 3)))
