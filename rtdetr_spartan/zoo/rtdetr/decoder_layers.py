# Follows the design of RT-DETR (lyuwenyu/RT-DETR, Apache-2.0).
"""Decoder internals of RT-DETR: multi-scale deformable cross-attention, one decoder layer and
the layer stack with iterative box refinement."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn import init

from rtdetr_spartan.zoo.rtdetr.utils import (
    MLP,
    activation_function,
    deformable_attention_core,
    inverse_sigmoid,
)

__all__ = ["MSDeformableAttention", "TransformerDecoderLayer", "TransformerDecoder"]


class MSDeformableAttention(nn.Module):
    """Multi-scale deformable attention: each head samples ``num_points`` points per level around
    the query's reference point/box and mixes them with learnt softmax weights."""

    def __init__(self, embed_dim: int = 256, num_heads: int = 8, num_levels: int = 4, num_points: int = 4) -> None:
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.head_dim = embed_dim // num_heads
        total_points = num_heads * num_levels * num_points

        self.sampling_offsets = nn.Linear(embed_dim, total_points * 2)
        self.attention_weights = nn.Linear(embed_dim, total_points)
        self.value_proj = nn.Linear(embed_dim, embed_dim)
        self.output_proj = nn.Linear(embed_dim, embed_dim)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # Offsets start on a ring: head k points in direction 2*pi*k/heads, point p at distance p+1.
        init.constant_(self.sampling_offsets.weight, 0)
        thetas = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        directions = torch.stack([thetas.cos(), thetas.sin()], -1)
        directions = directions / directions.abs().max(-1, keepdim=True).values
        grid = directions.reshape(self.num_heads, 1, 1, 2).tile((1, self.num_levels, self.num_points, 1))
        grid = grid * torch.arange(1, self.num_points + 1, dtype=torch.float32).reshape(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        init.constant_(self.attention_weights.weight, 0)
        init.constant_(self.attention_weights.bias, 0)
        init.xavier_uniform_(self.value_proj.weight)
        init.constant_(self.value_proj.bias, 0)
        init.xavier_uniform_(self.output_proj.weight)
        init.constant_(self.output_proj.bias, 0)

    def _sampling_locations(
        self, reference_points: torch.Tensor, offsets: torch.Tensor, spatial_shapes: Sequence[tuple[int, int]]
    ) -> torch.Tensor:
        """Absolute (x, y) in [0, 1]: [B, Q, heads, levels, points, 2].

        reference_points [B, Q, levels or 1, 2 or 4]: points move by offsets in pixels of each
        level; boxes (cx, cy, w, h) move by offsets scaled to half the box size / num_points.
        """
        if reference_points.shape[-1] == 2:
            normalizer = torch.tensor(
                [[w, h] for h, w in spatial_shapes], dtype=offsets.dtype, device=offsets.device
            ).reshape(1, 1, 1, self.num_levels, 1, 2)
            return reference_points[:, :, None, :, None, :] + offsets / normalizer
        if reference_points.shape[-1] == 4:
            centers = reference_points[:, :, None, :, None, :2]
            sizes = reference_points[:, :, None, :, None, 2:]
            return centers + offsets / self.num_points * sizes * 0.5
        raise ValueError(
            f"reference_points must end in 2 (points) or 4 (boxes), got shape {tuple(reference_points.shape)}"
        )

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        value: torch.Tensor,
        spatial_shapes: Sequence[tuple[int, int]],
        value_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Cross-attend queries to multi-level features.

        Args:
            query: [B, Q, C].
            reference_points: [B, Q, levels or 1, 4] cxcywh or [..., 2] xy, normalized to [0, 1].
            value: [B, sum(H_l * W_l), C], the flattened levels.
            spatial_shapes: (H_l, W_l) per level.
            value_mask: optional [B, sum(H_l * W_l)], True for valid (non-padding) positions.

        Returns:
            [B, Q, C].
        """
        batch, queries = query.shape[:2]
        value = self.value_proj(value)
        if value_mask is not None:
            value = value * value_mask.to(value.dtype).unsqueeze(-1)
        value = value.reshape(batch, value.shape[1], self.num_heads, self.head_dim)

        offsets = self.sampling_offsets(query).reshape(
            batch, queries, self.num_heads, self.num_levels, self.num_points, 2
        )
        weights = self.attention_weights(query).reshape(
            batch, queries, self.num_heads, self.num_levels * self.num_points
        )
        weights = F.softmax(weights, dim=-1).reshape(batch, queries, self.num_heads, self.num_levels, self.num_points)

        locations = self._sampling_locations(reference_points, offsets, spatial_shapes)
        output = deformable_attention_core(value, spatial_shapes, locations, weights)
        return self.output_proj(output)


class TransformerDecoderLayer(nn.Module):
    """Self-attention, deformable cross-attention and a feed-forward block, each post-norm."""

    compile_unit: ClassVar[bool] = True  # rtdetr_spartan.nn.compile

    def __init__(
        self,
        d_model: int = 256,
        n_head: int = 8,
        dim_feedforward: int = 1024,
        dropout: float = 0.0,
        activation: str = "relu",
        n_levels: int = 4,
        n_points: int = 4,
    ) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, n_head, dropout=dropout, batch_first=True)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)

        self.cross_attn = MSDeformableAttention(d_model, n_head, n_levels, n_points)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.activation = activation_function(activation)
        self.dropout3 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.dropout4 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(
        self,
        tgt: torch.Tensor,
        reference_points: torch.Tensor,
        memory: torch.Tensor,
        memory_spatial_shapes: Sequence[tuple[int, int]],
        attn_mask: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
        query_pos_embed: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """tgt: [B, Q, C]; reference_points: [B, Q, 1, 4] cxcywh in [0, 1]; memory: [B, L, C];
        attn_mask: [Q, Q] bool, True = may not attend; query_pos_embed: [B, Q, C]. -> [B, Q, C]."""
        with_pos = tgt if query_pos_embed is None else tgt + query_pos_embed
        attended, _ = self.self_attn(with_pos, with_pos, value=tgt, attn_mask=attn_mask)
        tgt = self.norm1(tgt + self.dropout1(attended))

        with_pos = tgt if query_pos_embed is None else tgt + query_pos_embed
        attended = self.cross_attn(with_pos, reference_points, memory, memory_spatial_shapes, memory_mask)
        tgt = self.norm2(tgt + self.dropout2(attended))

        expanded = self.linear2(self.dropout3(self.activation(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout4(expanded))


class TransformerDecoder(nn.Module):
    """A stack of decoder layers; each layer refines the previous layer's boxes.

    In training every layer is supervised; in eval decoding stops after layer ``eval_idx``.
    """

    def __init__(
        self, hidden_dim: int, decoder_layer: TransformerDecoderLayer, num_layers: int, eval_idx: int = -1
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(decoder_layer) for _ in range(num_layers))
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.eval_idx = eval_idx if eval_idx >= 0 else num_layers + eval_idx
        if not 0 <= self.eval_idx < num_layers:
            raise ValueError(f"eval_idx {eval_idx} is out of range for {num_layers} decoder layers")

    def forward(
        self,
        tgt: torch.Tensor,
        ref_points_unact: torch.Tensor,
        memory: torch.Tensor,
        memory_spatial_shapes: Sequence[tuple[int, int]],
        bbox_head: nn.ModuleList,
        score_head: nn.ModuleList,
        query_pos_head: MLP,
        attn_mask: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode queries.

        Args:
            tgt: [B, Q, C] initial query content.
            ref_points_unact: [B, Q, 4] initial boxes before sigmoid (cxcywh logits).
            memory: [B, L, C] flattened encoder features.

        Returns:
            (boxes [layers_out, B, Q, 4] cxcywh normalized, logits [layers_out, B, Q, classes]);
            layers_out is every layer in training and 1 (layer ``eval_idx``) in eval.
        """
        output = tgt
        out_boxes: list[torch.Tensor] = []
        out_logits: list[torch.Tensor] = []
        ref_points = ref_points_detach = F.sigmoid(ref_points_unact)
        for index, layer in enumerate(self.layers):
            query_pos_embed = query_pos_head(ref_points_detach)
            output = layer(
                output,
                ref_points_detach.unsqueeze(2),
                memory,
                memory_spatial_shapes,
                attn_mask,
                memory_mask,
                query_pos_embed,
            )
            delta = bbox_head[index](output)
            refined = F.sigmoid(delta + inverse_sigmoid(ref_points_detach))

            if self.training:
                out_logits.append(score_head[index](output))
                # From layer 1 on, the supervised box also backpropagates into the previous
                # layer's (undetached) box, as in the reference ("look forward twice").
                out_boxes.append(refined if index == 0 else F.sigmoid(delta + inverse_sigmoid(ref_points)))
            elif index == self.eval_idx:
                out_logits.append(score_head[index](output))
                out_boxes.append(refined)
                break

            ref_points = refined
            ref_points_detach = refined.detach() if self.training else refined
        return torch.stack(out_boxes), torch.stack(out_logits)
