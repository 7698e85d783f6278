# Follows the design of RT-DETR (lyuwenyu/RT-DETR, Apache-2.0).
"""PResNet: the ResNet-vd family (PaddlePaddle style) used as RT-DETR's CNN backbone.

Variant ``d`` has a three-conv stem and, where a block downsamples, an average-pool + 1x1 conv
shortcut. State-dict names follow the reference (``conv1.conv1_1``, ``res_layers.i.blocks.j``,
``branch2a``/``branch2b``/``branch2c``, ``short``) so its checkpoints load unchanged.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from rtdetr_spartan.core import register
from rtdetr_spartan.misc.checkpoint import load_model_weights
from rtdetr_spartan.nn.common import ConvNormLayer, freeze_batch_norm, get_activation

__all__ = ["PResNet", "BasicBlock", "BottleNeck"]

# Blocks per stage for each depth.
STAGE_BLOCKS: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
}
STAGE_WIDTHS = (64, 128, 256, 512)
STAGE_STRIDES = (4, 8, 16, 32)
VARIANTS = ("a", "b", "c", "d")


def _shortcut(ch_in: int, ch_out: int, stride: int, variant: str) -> nn.Module:
    """Projection shortcut; variant d average-pools before the 1x1 conv instead of striding it."""
    if variant == "d" and stride == 2:
        return nn.Sequential(
            OrderedDict(
                [
                    ("pool", nn.AvgPool2d(2, 2, 0, ceil_mode=True)),
                    ("conv", ConvNormLayer(ch_in, ch_out, 1, 1)),
                ]
            )
        )
    return ConvNormLayer(ch_in, ch_out, 1, stride)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection (ResNet-18/34)."""

    compile_unit: ClassVar[bool] = True  # rtdetr_spartan.nn.compile

    expansion = 1

    def __init__(
        self, ch_in: int, ch_out: int, stride: int, shortcut: bool, act: str | None = "relu", variant: str = "b"
    ) -> None:
        super().__init__()
        # Construction order fixes the state-dict order: `short` comes first here.
        self.short = nn.Identity() if shortcut else _shortcut(ch_in, ch_out, stride, variant)
        self.branch2a = ConvNormLayer(ch_in, ch_out, 3, stride, act=act)
        self.branch2b = ConvNormLayer(ch_out, ch_out, 3, 1, act=None)
        self.act = get_activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, ch_in, H, W] -> [B, ch_out, H / stride, W / stride]."""
        out = self.branch2b(self.branch2a(x))
        return self.act(out + self.short(x))


class BottleNeck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4) with a residual connection (ResNet-50/101)."""

    compile_unit: ClassVar[bool] = True  # rtdetr_spartan.nn.compile

    expansion = 4

    def __init__(
        self, ch_in: int, ch_out: int, stride: int, shortcut: bool, act: str | None = "relu", variant: str = "b"
    ) -> None:
        super().__init__()
        # Variant a strides the first 1x1 conv; the others stride the 3x3 conv.
        stride1, stride2 = (stride, 1) if variant == "a" else (1, stride)
        width = ch_out
        self.branch2a = ConvNormLayer(ch_in, width, 1, stride1, act=act)
        self.branch2b = ConvNormLayer(width, width, 3, stride2, act=act)
        self.branch2c = ConvNormLayer(width, ch_out * self.expansion, 1, 1)
        # Construction order fixes the state-dict order: `short` comes last here.
        self.short = nn.Identity() if shortcut else _shortcut(ch_in, ch_out * self.expansion, stride, variant)
        self.act = get_activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, ch_in, H, W] -> [B, 4 ch_out, H / stride, W / stride]."""
        out = self.branch2c(self.branch2b(self.branch2a(x)))
        return self.act(out + self.short(x))


class Stage(nn.Module):
    """``count`` residual blocks; the first projects (and, except in stage 2, downsamples)."""

    def __init__(
        self,
        block: type[BasicBlock] | type[BottleNeck],
        ch_in: int,
        ch_out: int,
        count: int,
        stage_num: int,
        act: str | None = "relu",
        variant: str = "b",
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList()
        for i in range(count):
            first = i == 0
            stride = 2 if first and stage_num != 2 else 1
            self.blocks.append(block(ch_in, ch_out, stride=stride, shortcut=not first, act=act, variant=variant))
            ch_in = ch_out * block.expansion

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


def _stem(variant: str, act: str | None) -> nn.Sequential:
    """Variants c/d: three 3x3 convs (the first strided); a/b: one strided 7x7 conv."""
    if variant in ("c", "d"):
        layers = [(3, 32, 3, 2, "conv1_1"), (32, 32, 3, 1, "conv1_2"), (32, 64, 3, 1, "conv1_3")]
    else:
        layers = [(3, 64, 7, 2, "conv1_1")]
    return nn.Sequential(
        OrderedDict((name, ConvNormLayer(c_in, c_out, k, s, act=act)) for c_in, c_out, k, s, name in layers)
    )


def _load_local_checkpoint(module: nn.Module, pretrained: str | Path) -> None:
    """The project's one weight loader, non-strict: matching tensors load, the rest are warned about."""
    load_model_weights(
        module, Path(pretrained), strict=False, expect_task="classification", purpose="PResNet.pretrained"
    )


def _check_pretrained(pretrained: bool | str | Path) -> str | Path | None:
    """The local checkpoint to load, or None; downloads are refused with a clear message."""
    if pretrained is False or pretrained is None:
        return None
    text = str(pretrained)
    if pretrained is True or "://" in text:
        raise ValueError(
            f"PResNet.pretrained={pretrained!r}: downloading weights is not supported; pass the "
            "local path of a PResNet state dict (e.g. PResNet.pretrained=path/to/resnet50vd.pth) "
            "or False"
        )
    if not isinstance(pretrained, (str, Path)):
        raise ValueError(f"PResNet.pretrained must be False or a local checkpoint path, got {pretrained!r}")
    return pretrained


@register()
class PResNet(nn.Module):
    """ResNet-vd backbone returning the feature maps of the stages in ``return_idx``.

    Args:
        depth: 18, 34, 50 or 101.
        variant: 'a' | 'b' | 'c' | 'd' (c/d: 3-conv stem; d: avg-pool projection shortcut).
        num_stages: residual stages built (1..4).
        return_idx: stages whose outputs ``forward`` returns (0 = stride 4 ... 3 = stride 32).
        act: activation name.
        freeze_at: -1 trains everything; k >= 0 freezes the stem and the first k stages.
        freeze_norm: replace every BatchNorm2d by a FrozenBatchNorm2d.
        pretrained: False, or a local state-dict path (True / URLs raise: no downloads).
    """

    def __init__(
        self,
        depth: int = 50,
        variant: str = "d",
        num_stages: int = 4,
        return_idx: Sequence[int] = (0, 1, 2, 3),
        act: str = "relu",
        freeze_at: int = -1,
        freeze_norm: bool = True,
        pretrained: bool | str | Path = False,
    ) -> None:
        super().__init__()
        checkpoint = _check_pretrained(pretrained)
        if depth not in STAGE_BLOCKS:
            raise ValueError(f"PResNet.depth={depth!r}; expected one of {sorted(STAGE_BLOCKS)}")
        if variant not in VARIANTS:
            raise ValueError(f"PResNet.variant={variant!r}; expected one of {VARIANTS}")
        if not 1 <= num_stages <= 4:
            raise ValueError(f"PResNet.num_stages={num_stages!r}; expected 1..4")
        if any(not 0 <= i < num_stages for i in return_idx):
            raise ValueError(f"PResNet.return_idx={list(return_idx)}; each index must be in 0..{num_stages - 1}")

        block = BottleNeck if depth >= 50 else BasicBlock
        channels = [w * block.expansion for w in STAGE_WIDTHS]
        self.conv1 = _stem(variant, act)
        self.res_layers = nn.ModuleList()
        ch_in = 64
        for i in range(num_stages):
            self.res_layers.append(
                Stage(block, ch_in, STAGE_WIDTHS[i], STAGE_BLOCKS[depth][i], stage_num=i + 2, act=act, variant=variant)
            )
            ch_in = channels[i]

        self.return_idx = list(return_idx)
        self.out_channels = [channels[i] for i in self.return_idx]
        self.out_strides = [STAGE_STRIDES[i] for i in self.return_idx]

        if freeze_at >= 0:
            self._freeze(self.conv1)
            for stage in self.res_layers[: min(freeze_at, num_stages)]:
                self._freeze(stage)
        if freeze_norm:
            freeze_batch_norm(self)
        if checkpoint is not None:
            _load_local_checkpoint(self, checkpoint)

    @staticmethod
    def _freeze(module: nn.Module) -> None:
        for p in module.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: [B, 3, H, W] -> one map per ``return_idx``: [B, out_channels[i], H/s_i, W/s_i]."""
        x = F.max_pool2d(self.conv1(x), kernel_size=3, stride=2, padding=1)
        outs = []
        for idx, stage in enumerate(self.res_layers):
            x = stage(x)
            if idx in self.return_idx:
                outs.append(x)
        return outs
