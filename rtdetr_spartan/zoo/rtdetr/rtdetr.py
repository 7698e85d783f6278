# Follows the design of RT-DETR (lyuwenyu/RT-DETR, Apache-2.0).
"""The RT-DETR detector: backbone -> hybrid encoder -> transformer decoder."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rtdetr_spartan.core import ConfigError, register
from rtdetr_spartan.nn.reparameterize import reparameterize_model

__all__ = ["RTDETR"]


def _check_levels(backbone: nn.Module, encoder: nn.Module) -> None:
    """The encoder's ``in_channels`` / ``feat_strides`` must be the backbone's ``out_channels`` /
    ``out_strides`` (when both declare them): a config that changes the backbone (a SpaRTAN
    variant's widths, PResNet's depth or ``return_idx``) must change the encoder too.

    Raises:
        ConfigError: naming both settings and the values the backbone needs.
    """
    pairs = (("in_channels", "out_channels"), ("feat_strides", "out_strides"))
    for encoder_key, backbone_key in pairs:
        want, have = getattr(backbone, backbone_key, None), getattr(encoder, encoder_key, None)
        if want is not None and have is not None and list(want) != list(have):
            raise ConfigError(
                f"{type(encoder).__name__}.{encoder_key}={list(have)} does not match the backbone: "
                f"{type(backbone).__name__} returns {backbone_key} {list(want)}; set "
                f"{type(encoder).__name__}.{encoder_key}: {list(want)}"
            )


@register()
class RTDETR(nn.Module):
    """Thin composition of the three parts.

    ``multi_scale``: in training, each batch is resized to a square side drawn uniformly from
    this list (torch's global RNG); boxes are normalized, so targets need no change.
    """

    __inject__ = ["backbone", "encoder", "decoder"]

    def __init__(
        self, backbone: nn.Module, encoder: nn.Module, decoder: nn.Module, multi_scale: Sequence[int] | None = None
    ) -> None:
        super().__init__()
        _check_levels(backbone, encoder)
        # Attribute order is the reference's state-dict order: backbone, decoder, encoder.
        self.backbone = backbone
        self.decoder = decoder
        self.encoder = encoder
        self.multi_scale = tuple(multi_scale) if multi_scale else None

    def _resize_for_training(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.multi_scale):
            return x
        side = int(self.multi_scale[int(torch.randint(len(self.multi_scale), ()))])
        return F.interpolate(x, size=[side, side])

    def forward(self, x: torch.Tensor, targets: Sequence[Mapping[str, torch.Tensor]] | None = None) -> dict[str, Any]:
        """x: [B, 3, H, W] float images; targets (training): per image ``labels`` [n] and
        ``boxes`` [n, 4] cxcywh normalized. Returns the decoder's dict (``pred_logits``
        [B, Q, classes], ``pred_boxes`` [B, Q, 4] cxcywh normalized, plus training extras)."""
        x = self._resize_for_training(x)
        return self.decoder(self.encoder(self.backbone(x)), targets)

    def deploy(self) -> RTDETR:
        """Eval mode, with every block that has a faster inference form converted in place by
        the one walker (``nn.reparameterize.reparameterize_model``): the encoder's RepVGG blocks
        fuse their branches and a SpaRTAN backbone's layers become their inference forms. One
        way: the state dict is in the inference layout afterwards; save training weights before
        deploying (they load into a fresh model, which can then be deployed)."""
        reparameterize_model(self)
        return self
