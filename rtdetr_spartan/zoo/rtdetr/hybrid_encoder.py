# Follows the design of RT-DETR (lyuwenyu/RT-DETR, Apache-2.0).
"""RT-DETR's hybrid encoder: AIFI (attention on the coarsest level) + CCFM (CSP/RepVGG FPN-PAN).

State-dict names equal the reference's, so its checkpoints load unchanged.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar, cast

import torch
import torch.nn.functional as F
from torch import nn

from rtdetr_spartan.core import register
from rtdetr_spartan.nn.common import ConvNormLayer, fold_batch_norm, get_activation
from rtdetr_spartan.nn.tracing import is_tracing

if TYPE_CHECKING:
    from rtdetr_spartan.nn.reparameterize import ExportForm

__all__ = [
    "HybridEncoder",
    "RepVggBlock",
    "CSPRepLayer",
    "TransformerEncoderLayer",
    "TransformerEncoder",
    "build_2d_sincos_position_embedding",
]


def build_2d_sincos_position_embedding(
    w: int | torch.Tensor,
    h: int | torch.Tensor,
    embed_dim: int = 256,
    temperature: float = 10000.0,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Fixed 2-D sine-cosine embedding: [1, w * h, embed_dim] float32.

    Channels are [sin(x w_k), cos(x w_k), sin(y w_k), cos(y w_k)], w_k = temperature^(-k/(C/4)).
    The grid is built like the reference (meshgrid of (w, h) with 'ij' indexing), so token
    ``n`` gets x = n // h, y = n % h although the features are flattened row-major (n = y W + x);
    trained checkpoints depend on that order, so it is kept. ``w``/``h`` may be traced sizes
    (dynamic ONNX export): only torch ops are used.
    """
    if embed_dim % 4 != 0:
        raise ValueError(f"embed_dim={embed_dim} must be divisible by 4 for the 2-D sin-cos position embedding")
    pos_dim = embed_dim // 4
    grid_w = torch.arange(cast(int, w), dtype=torch.float32, device=device)  # traced sizes work as ints
    grid_h = torch.arange(cast(int, h), dtype=torch.float32, device=device)
    grid_w, grid_h = torch.meshgrid(grid_w, grid_h, indexing="ij")
    omega = torch.arange(pos_dim, dtype=torch.float32, device=device) / pos_dim
    omega = 1.0 / (temperature**omega)
    out_w = grid_w.flatten()[:, None] * omega[None, :]
    out_h = grid_h.flatten()[:, None] * omega[None, :]
    return torch.cat([out_w.sin(), out_w.cos(), out_h.sin(), out_h.cos()], dim=1)[None]


class RepVggBlock(nn.Module):
    """3x3 conv-BN + 1x1 conv-BN summed, then activation; ``reparameterize`` fuses both."""

    def __init__(self, ch_in: int, ch_out: int, act: str | None = "relu") -> None:
        super().__init__()
        self.ch_in = ch_in
        self.ch_out = ch_out
        self.conv1 = ConvNormLayer(ch_in, ch_out, 3, 1, padding=1, act=None)
        self.conv2 = ConvNormLayer(ch_in, ch_out, 1, 1, padding=0, act=None)
        self.act = get_activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, ch_in, H, W] -> [B, ch_out, H, W]."""
        if hasattr(self, "conv"):
            return self.act(self.conv(x))
        return self.act(self.conv1(x) + self.conv2(x))

    @torch.no_grad()
    def reparameterize(self, export: ExportForm | None = None) -> RepVggBlock:
        """Fuse both branches into one equivalent 3x3 conv (``self.conv``, with bias), in place
        (``nn.reparameterize``; the export form is the same). The BatchNorms must be in eval
        mode. The two branches are removed afterwards; calling again is a no-op."""
        if hasattr(self, "conv"):
            return self
        kernel3, bias3 = fold_batch_norm(self.conv1.norm, self.conv1.conv.weight, self.conv1.conv.bias)
        kernel1, bias1 = fold_batch_norm(self.conv2.norm, self.conv2.conv.weight, self.conv2.conv.bias)
        conv = nn.Conv2d(self.ch_in, self.ch_out, 3, 1, padding=1, bias=True)
        conv = conv.to(device=kernel3.device, dtype=kernel3.dtype)
        conv.weight.copy_(kernel3 + F.pad(kernel1, [1, 1, 1, 1]))
        cast(torch.Tensor, conv.bias).copy_(bias3 + bias1)
        self.conv = conv
        del self.conv1, self.conv2
        return self


class CSPRepLayer(nn.Module):
    """Cross-stage partial layer: conv1 -> RepVgg blocks, plus conv2, summed, then conv3."""

    compile_unit: ClassVar[bool] = True  # rtdetr_spartan.nn.compile

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_blocks: int = 3,
        expansion: float = 1.0,
        bias: bool | None = None,
        act: str = "silu",
    ) -> None:
        super().__init__()
        hidden = int(out_channels * expansion)
        self.conv1 = ConvNormLayer(in_channels, hidden, 1, 1, bias=bias, act=act)
        self.conv2 = ConvNormLayer(in_channels, hidden, 1, 1, bias=bias, act=act)
        self.bottlenecks = nn.Sequential(*[RepVggBlock(hidden, hidden, act=act) for _ in range(num_blocks)])
        self.conv3 = (
            ConvNormLayer(hidden, out_channels, 1, 1, bias=bias, act=act) if hidden != out_channels else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, in_channels, H, W] -> [B, out_channels, H, W]."""
        return self.conv3(self.bottlenecks(self.conv1(x)) + self.conv2(x))


class TransformerEncoderLayer(nn.Module):
    """Self-attention + feed-forward block (post-norm unless ``normalize_before``)."""

    compile_unit: ClassVar[bool] = True  # rtdetr_spartan.nn.compile

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: str = "relu",
        normalize_before: bool = False,
    ) -> None:
        super().__init__()
        self.normalize_before = normalize_before
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.activation = get_activation(activation)

    def forward(
        self, src: torch.Tensor, src_mask: torch.Tensor | None = None, pos_embed: torch.Tensor | None = None
    ) -> torch.Tensor:
        """src: [B, N, d_model]; pos_embed: [1 or B, N, d_model] added to queries/keys only."""
        residual = src
        if self.normalize_before:
            src = self.norm1(src)
        q = k = src if pos_embed is None else src + pos_embed
        src, _ = self.self_attn(q, k, value=src, attn_mask=src_mask, need_weights=False)
        src = residual + self.dropout1(src)
        if not self.normalize_before:
            src = self.norm1(src)

        residual = src
        if self.normalize_before:
            src = self.norm2(src)
        src = self.linear2(self.dropout(self.activation(self.linear1(src))))
        src = residual + self.dropout2(src)
        if not self.normalize_before:
            src = self.norm2(src)
        return src


class TransformerEncoder(nn.Module):
    """``num_layers`` copies of ``encoder_layer`` (identical at initialisation, as reference)."""

    def __init__(self, encoder_layer: TransformerEncoderLayer, num_layers: int, norm: nn.Module | None = None) -> None:
        super().__init__()
        self.layers = nn.ModuleList([copy.deepcopy(encoder_layer) for _ in range(num_layers)])
        self.num_layers = num_layers
        self.norm = norm

    def forward(
        self, src: torch.Tensor, src_mask: torch.Tensor | None = None, pos_embed: torch.Tensor | None = None
    ) -> torch.Tensor:
        """src: [B, N, C] -> [B, N, C]."""
        for layer in self.layers:
            src = layer(src, src_mask=src_mask, pos_embed=pos_embed)
        return src if self.norm is None else self.norm(src)


@register()
class HybridEncoder(nn.Module):
    """AIFI on the levels in ``use_encoder_idx`` then CCFM top-down/bottom-up fusion.

    ``forward(feats)`` takes one [B, in_channels[i], H_i, W_i] map per level (finest first, each
    level half the size of the previous) and returns as many [B, hidden_dim, H_i, W_i] maps.
    When ``eval_spatial_size`` ([H, W] of the input image) is given, the position embedding of
    that size is cached in a non-persistent buffer and used in eval mode when the level's size
    matches; otherwise (training, other sizes, export tracing) it is computed from the shape.
    """

    __share__ = ["eval_spatial_size"]

    def __init__(
        self,
        in_channels: Sequence[int] = (512, 1024, 2048),
        feat_strides: Sequence[int] = (8, 16, 32),
        hidden_dim: int = 256,
        nhead: int = 8,
        dim_feedforward: int = 1024,
        dropout: float = 0.0,
        enc_act: str = "gelu",
        use_encoder_idx: Sequence[int] = (2,),
        num_encoder_layers: int = 1,
        pe_temperature: float = 10000,
        expansion: float = 1.0,
        depth_mult: float = 1.0,
        act: str = "silu",
        eval_spatial_size: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self._check_args(in_channels, feat_strides, hidden_dim, use_encoder_idx)
        self.in_channels = list(in_channels)
        self.feat_strides = list(feat_strides)
        self.hidden_dim = hidden_dim
        self.use_encoder_idx = list(use_encoder_idx)
        self.num_encoder_layers = num_encoder_layers
        self.pe_temperature = pe_temperature
        self.eval_spatial_size = list(eval_spatial_size) if eval_spatial_size else None
        self.out_channels = [hidden_dim] * len(self.in_channels)
        self.out_strides = list(feat_strides)
        num_blocks = round(3 * depth_mult)

        # Build order matches the reference so a seeded default init matches too.
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, hidden_dim, kernel_size=1, bias=False), nn.BatchNorm2d(hidden_dim))
            for c in self.in_channels
        )
        layer = TransformerEncoderLayer(
            hidden_dim, nhead=nhead, dim_feedforward=dim_feedforward, dropout=dropout, activation=enc_act
        )
        self.encoder = nn.ModuleList(
            TransformerEncoder(copy.deepcopy(layer), num_encoder_layers) for _ in self.use_encoder_idx
        )
        self.lateral_convs = nn.ModuleList()
        self.fpn_blocks = nn.ModuleList()
        for _ in range(len(self.in_channels) - 1):
            self.lateral_convs.append(ConvNormLayer(hidden_dim, hidden_dim, 1, 1, act=act))
            self.fpn_blocks.append(CSPRepLayer(hidden_dim * 2, hidden_dim, num_blocks, act=act, expansion=expansion))
        self.downsample_convs = nn.ModuleList()
        self.pan_blocks = nn.ModuleList()
        for _ in range(len(self.in_channels) - 1):
            self.downsample_convs.append(ConvNormLayer(hidden_dim, hidden_dim, 3, 2, act=act))
            self.pan_blocks.append(CSPRepLayer(hidden_dim * 2, hidden_dim, num_blocks, act=act, expansion=expansion))
        self._cache_position_embeddings()

    @staticmethod
    def _check_args(
        in_channels: Sequence[int], feat_strides: Sequence[int], hidden_dim: int, use_encoder_idx: Sequence[int]
    ) -> None:
        if len(in_channels) != len(feat_strides):
            raise ValueError(
                f"HybridEncoder: in_channels {list(in_channels)} and feat_strides "
                f"{list(feat_strides)} must have the same length"
            )
        if hidden_dim % 4 != 0:
            raise ValueError(f"HybridEncoder.hidden_dim={hidden_dim} must be divisible by 4")
        bad = [i for i in use_encoder_idx if not 0 <= i < len(in_channels)]
        if bad:
            raise ValueError(
                f"HybridEncoder.use_encoder_idx={list(use_encoder_idx)}: {bad} out "
                f"of range for {len(in_channels)} levels"
            )

    def _cache_position_embeddings(self) -> None:
        """Non-persistent ``pos_embed{idx}`` buffers for ``eval_spatial_size`` (not saved)."""
        self._cached_hw: dict[int, tuple[int, int]] = {}
        if not self.eval_spatial_size:
            return
        height, width = self.eval_spatial_size
        for idx in self.use_encoder_idx:
            stride = self.feat_strides[idx]
            h, w = height // stride, width // stride
            self._cached_hw[idx] = (h, w)
            embed = build_2d_sincos_position_embedding(w, h, self.hidden_dim, self.pe_temperature)
            self.register_buffer(f"pos_embed{idx}", embed, persistent=False)

    def _position_embedding(
        self, idx: int, h: int | torch.Tensor, w: int | torch.Tensor, device: torch.device
    ) -> torch.Tensor:
        """[1, h * w, hidden_dim]: the cached buffer when it fits, else computed from (h, w)."""
        if not self.training and not is_tracing() and self._cached_hw.get(idx) == (h, w):
            return getattr(self, f"pos_embed{idx}")
        return build_2d_sincos_position_embedding(w, h, self.hidden_dim, self.pe_temperature, device=device)

    def _encode(self, proj_feats: list[torch.Tensor]) -> None:
        """AIFI: self-attention over the flattened tokens of each level in use_encoder_idx."""
        for encoder, idx in zip(self.encoder, self.use_encoder_idx):
            feat = proj_feats[idx]
            h, w = feat.shape[2:]
            tokens = feat.flatten(2).permute(0, 2, 1)  # [B, H*W, C]
            pos_embed = self._position_embedding(idx, h, w, feat.device).to(tokens.dtype)
            memory = encoder(tokens, pos_embed=pos_embed)
            memory = memory.permute(0, 2, 1).reshape(-1, self.hidden_dim, h, w)
            proj_feats[idx] = memory.contiguous()

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """feats: [B, in_channels[i], H_i, W_i] per level -> [B, hidden_dim, H_i, W_i] per level."""
        if len(feats) != len(self.in_channels):
            raise ValueError(
                f"HybridEncoder expects {len(self.in_channels)} feature maps "
                f"(in_channels={self.in_channels}), got {len(feats)}"
            )
        proj_feats = [proj(feat) for proj, feat in zip(self.input_proj, feats)]
        if self.num_encoder_layers > 0:
            self._encode(proj_feats)

        # Top-down FPN: inner_outs[0] is always the finest map fused so far.
        levels = len(self.in_channels)
        inner_outs = [proj_feats[-1]]
        for step, idx in enumerate(range(levels - 1, 0, -1)):
            feat_high = self.lateral_convs[step](inner_outs[0])
            inner_outs[0] = feat_high
            feat_low = proj_feats[idx - 1]
            # Nearest resize to the finer map's size: identical to the reference's x2 upsampling
            # when the sizes are exactly double, and still valid for odd input sizes.
            upsampled = F.interpolate(feat_high, size=feat_low.shape[-2:], mode="nearest")
            inner_outs.insert(0, self.fpn_blocks[step](torch.cat([upsampled, feat_low], dim=1)))

        # Bottom-up PAN.
        outs = [inner_outs[0]]
        for step in range(levels - 1):
            downsampled = self.downsample_convs[step](outs[-1])
            fused = torch.cat([downsampled, inner_outs[step + 1]], dim=1)
            outs.append(self.pan_blocks[step](fused))
        return outs
