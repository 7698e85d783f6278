# Follows the design of SpaRTAN (henry-pay/SpaRTAN, Apache-2.0).
"""SpaRTAN: the CNN of Pay et al. (IJCNN 2025) as ImageNet classifier and detection backbone.

One module serves both uses with the reference classifier's state-dict names: the stem is
``conv.0`` / ``conv.1``, the blocks and the downsample layers of all stages form one flat
``layers`` sequence, and the classifier adds ``linear``; reference checkpoints load unchanged.
Any variant the reference's constructor accepts builds from ``variant`` (``SpaRTANVariant``).
The blocks live in ``spartan_layers.py``; their inference and ONNX forms (``spartan_inference``,
``spartan_export``) come from ``rtdetr_spartan.nn.reparameterize.reparameterize_model``, which
``RTDETR.deploy()`` applies too.

Block (stage width C): x += DropPath(scale_1 * SMixer(GN(x))); x += DropPath(scale_2 *
CMixer(GN(x))), GN = GroupNorm with one group. The network computes in channels_last memory
format (its outputs are channels_last tensors).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rtdetr_spartan.core import ConfigError, register
from rtdetr_spartan.misc.checkpoint import load_model_weights
from rtdetr_spartan.nn.backbones.spartan_layers import Block, ConvNormAct
from rtdetr_spartan.nn.common import freeze_batch_norm

__all__ = ["SpaRTAN", "SpaRTANClassifier", "SpaRTANVariant", "VARIANTS", "load_pretrained"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SpaRTANVariant:
    """Network shape: per stage the number of blocks, the width and the CMixer expansion.

    ``widths[0]`` is also the stem's width (the reference's ``init_dim``; ``widths[1:]`` are its
    ``dims``). Stages from the middle one on (index >= stages // 2) use grouped convs. The
    reference's constraints hold: equal lengths, depths >= 1, widths divisible by 8 (the SMixer
    halves a width and its squeeze-excite quarters that), integer expand ratios >= 2.
    """

    depths: tuple[int, ...]
    widths: tuple[int, ...]
    expand_ratios: tuple[int, ...]
    drop_path_rate: float = 0.0

    def __post_init__(self) -> None:
        lengths = {name: len(getattr(self, name)) for name in _STAGE_RULES}
        if len(set(lengths.values())) != 1 or not self.depths:
            raise ConfigError(
                f"SpaRTAN.variant: depths, widths and expand_ratios need one entry per stage, got lengths {lengths}"
            )
        for name, (ok, expected) in _STAGE_RULES.items():
            for index, value in enumerate(getattr(self, name)):
                if isinstance(value, bool) or not isinstance(value, int) or not ok(value):
                    raise ConfigError(f"SpaRTAN.variant.{name}[{index}]={value!r}: expected {expected}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ConfigError(f"SpaRTAN.variant.drop_path_rate={self.drop_path_rate!r}: expected a rate in [0, 1)")

    @classmethod
    def from_config(cls, variant: str | Mapping[str, Any] | SpaRTANVariant) -> SpaRTANVariant:
        """A name from ``VARIANTS``, a mapping {depths, widths, expand_ratios[, drop_path_rate]}
        (YAML or Python), or a variant."""
        if isinstance(variant, SpaRTANVariant):
            return variant
        if isinstance(variant, str) and variant in VARIANTS:
            return VARIANTS[variant]
        expected = f"expected one of {sorted(VARIANTS)} or a mapping {{depths, widths, expand_ratios}}"
        if not isinstance(variant, Mapping):
            raise ConfigError(f"SpaRTAN.variant={variant!r} is unknown; {expected}")
        unknown, missing = set(variant) - {*_STAGE_RULES, "drop_path_rate"}, set(_STAGE_RULES) - set(variant)
        if unknown or missing:
            raise ConfigError(
                f"SpaRTAN.variant: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}; {expected}"
                " (drop_path_rate optional)"
            )
        for name in _STAGE_RULES:
            if isinstance(variant[name], (str, bytes)) or not isinstance(variant[name], Sequence):
                raise ConfigError(f"SpaRTAN.variant.{name}={variant[name]!r}: expected a list with one entry per stage")
        stages = {name: tuple(variant[name]) for name in _STAGE_RULES}
        return cls(**stages, drop_path_rate=float(variant.get("drop_path_rate", 0.0)))


# per-stage fields: (valid, what a valid entry is)
_STAGE_RULES: dict[str, tuple[Callable[[int], bool], str]] = {
    "depths": (lambda v: v >= 1, "an integer >= 1"),
    "widths": (lambda v: v > 0 and v % 8 == 0, "a positive integer divisible by 8"),
    "expand_ratios": (lambda v: v >= 2, "an integer > 1"),
}

VARIANTS: dict[str, SpaRTANVariant] = {
    # The paper's SpaRTAN-T (reference config spartan.yaml): 3.82 M parameters as classifier.
    "T": SpaRTANVariant(
        depths=(3, 3, 12, 2), widths=(32, 64, 128, 256), expand_ratios=(4, 4, 2, 2), drop_path_rate=0.1
    ),
}


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


def load_pretrained(model: nn.Module, path: str | Path) -> int:
    """Load a SpaRTAN classifier checkpoint into ``model`` (a backbone); returns tensors loaded.

    Accepts a bare state dict, ``{'model': sd}`` or ``{'ema': {'module': sd}}`` (EMA preferred),
    strips a ``module.`` (DDP) prefix and drops the classifier head ``linear.*``
    (``misc.checkpoint.load_model_weights``, strict). Missing, unexpected or differently shaped
    tensors raise a ValueError that names them.
    """
    path = Path(path)
    if not path.exists():  # a folder: load_checkpoint says it is one
        raise FileNotFoundError(f"SpaRTAN.pretrained: checkpoint {str(path)!r} does not exist")
    # the one loader's strict policy: every difference is an error naming the tensors
    report = load_model_weights(
        model, path, strict=True, ignore=("linear.",), expect_task="classification", purpose="SpaRTAN.pretrained"
    )
    loaded = len(report.loaded)
    logger.info("SpaRTAN: loaded %d tensors from %s", loaded, path)
    return loaded


@register()
class SpaRTAN(nn.Module):
    """SpaRTAN trunk; as a detection backbone returns the stage outputs in ``return_idx``.

    Args:
        variant: a key of ``VARIANTS`` ('T': the paper's SpaRTAN-T), or a mapping
            {depths, widths, expand_ratios[, drop_path_rate]} (see ``SpaRTANVariant``).
        return_idx: stages whose outputs ``forward`` returns (0: stride 4 ... 3: stride 32).
        freeze_at: -1 trains everything; k >= 0 freezes the stem and the first k stages
            (a stage includes the downsample layer in front of it).
        freeze_norm: replace every BatchNorm2d by a FrozenBatchNorm2d (the GroupNorms stay).
        pretrained: None/False, or the local path of a classifier checkpoint (head dropped).
        drop_path_rate: stochastic-depth rate towards the last block; None: the variant's.
    """

    def __init__(
        self,
        variant: str | Mapping[str, Any] | SpaRTANVariant = "T",
        return_idx: Sequence[int] = (1, 2, 3),
        freeze_at: int = -1,
        freeze_norm: bool = False,
        pretrained: bool | str | Path | None = None,
        drop_path_rate: float | None = None,
    ) -> None:
        super().__init__()
        spec = SpaRTANVariant.from_config(variant)
        num_stages = len(spec.depths)
        if not return_idx or any(not 0 <= i < num_stages for i in return_idx):
            raise ValueError(f"SpaRTAN.return_idx={list(return_idx)}; expected indices in 0..{num_stages - 1}")
        if pretrained is True or not isinstance(pretrained, (str, Path, type(None), bool)) or "://" in str(pretrained):
            raise ValueError(
                f"SpaRTAN.pretrained={pretrained!r}: expected None/False or the local "
                "path of a SpaRTAN classifier checkpoint (weights are never downloaded)"
            )
        rate = spec.drop_path_rate if drop_path_rate is None else drop_path_rate
        stem = spec.widths[0]
        self.conv = nn.Sequential(
            ConvNormAct(3, stem // 2, 3, stride=2, padding=1),
            ConvNormAct(stem // 2, stem, 3, stride=2, padding=1),
        )
        layers, self._stage_ends = _build_layers(spec, rate)
        self.layers = nn.Sequential(*layers)

        self.variant = spec
        self.return_idx = sorted(return_idx)
        self.out_channels = [spec.widths[i] for i in self.return_idx]
        self.out_strides = [2 ** (i + 2) for i in self.return_idx]

        if freeze_at >= 0:
            for module in self._stage_modules(min(freeze_at, num_stages)):
                module.requires_grad_(False)
        if freeze_norm:
            freeze_batch_norm(self)
        if pretrained is not None and pretrained is not False:
            load_pretrained(self, pretrained)

    def _stage_modules(self, num: int) -> list[nn.Module]:
        """The stem and the layers of the first ``num`` stages."""
        end = self._stage_ends[num - 1] + 1 if num > 0 else 0
        return [self.conv, *self.layers[:end]]

    def forward_stages(self, x: torch.Tensor, return_idx: Sequence[int]) -> list[torch.Tensor]:
        """x: [B, 3, H, W] (H, W divisible by 32) -> [B, widths[i], H / 2^(i+2), W / 2^(i+2)]
        for each stage i in ``return_idx`` (ascending)."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"SpaRTAN expects input [B, 3, H, W], got {tuple(x.shape)}")
        x = self.conv(x.contiguous(memory_format=torch.channels_last))
        taps = {self._stage_ends[i]: i for i in return_idx}
        outs = []
        for index, layer in enumerate(self.layers[: max(taps) + 1]):
            x = layer(x)
            if index in taps:
                outs.append(x)
        return outs

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: [B, 3, H, W] -> one map per ``return_idx``: [B, out_channels[i], H/s_i, W/s_i]."""
        return self.forward_stages(x, self.return_idx)


@register()
class SpaRTANClassifier(SpaRTAN):
    """SpaRTAN ImageNet classifier: trunk -> global average pool -> ``linear``."""

    __share__ = ["num_classes"]

    def __init__(
        self,
        variant: str | Mapping[str, Any] | SpaRTANVariant = "T",
        num_classes: int = 1000,
        drop_path_rate: float | None = None,
    ) -> None:
        spec = SpaRTANVariant.from_config(variant)
        super().__init__(spec, return_idx=(len(spec.depths) - 1,), drop_path_rate=drop_path_rate)
        self.linear = nn.Linear(spec.widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """x: [B, 3, H, W] -> logits [B, num_classes]."""
        feat = self.forward_stages(x, self.return_idx)[-1]
        return self.linear(feat.mean((2, 3)))
