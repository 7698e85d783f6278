# Follows the design of RT-DETR (lyuwenyu/RT-DETR, Apache-2.0).
"""The RT-DETR transformer decoder head (``RTDETRTransformer``).

Pipeline: project the encoder maps to ``hidden_dim`` and flatten them; score every anchor
(one per feature-map cell and level) with the encoder head; take the top ``num_queries`` anchors
as initial queries and boxes; in training, prepend contrastive denoising queries; decode with
iterative box refinement.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn import init

from rtdetr_spartan.core import register
from rtdetr_spartan.nn.tracing import is_tracing
from rtdetr_spartan.zoo.rtdetr.decoder_layers import TransformerDecoder, TransformerDecoderLayer
from rtdetr_spartan.zoo.rtdetr.denoising import build_contrastive_denoising_group
from rtdetr_spartan.zoo.rtdetr.utils import MLP, bias_init_with_prob

__all__ = ["RTDETRTransformer", "generate_anchors"]

SpatialShapes = list[tuple[int, int]]


def _level_anchors(
    height: int, width: int, level: int, grid_size: float, dtype: torch.dtype, device: torch.device | None
) -> torch.Tensor:
    """[1, H*W, 4] cxcywh anchors at the cell centers of one level, side grid_size * 2**level."""
    ys = torch.arange(height, dtype=dtype, device=device)
    xs = torch.arange(width, dtype=dtype, device=device)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    # Divide by a tensor, not a Python number: the sizes stay symbolic in ONNX export, and CUDA
    # would otherwise multiply by the reciprocal, which rounds differently from the reference.
    size = torch.stack([xs.new_full((), width), ys.new_full((), height)])
    centers = (torch.stack([grid_x, grid_y], -1).unsqueeze(0) + 0.5) / size
    sides = torch.full_like(centers, grid_size) * (2.0**level)
    return torch.cat([centers, sides], -1).reshape(1, -1, 4)


def generate_anchors(
    spatial_shapes: Sequence[tuple[int, int]],
    grid_size: float = 0.05,
    eps: float = 1e-2,
    dtype: torch.dtype = torch.float32,
    device: torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchors of all levels as logits and their validity.

    Returns:
        (anchors [1, L, 4] inverse-sigmoid cxcywh, +inf where invalid;
        valid_mask [1, L, 1] bool, True where every coordinate lies in (eps, 1 - eps)).
    """
    anchors = torch.cat(
        [_level_anchors(h, w, level, grid_size, dtype, device) for level, (h, w) in enumerate(spatial_shapes)], 1
    )
    valid_mask = ((anchors > eps) & (anchors < 1 - eps)).all(-1, keepdim=True)
    anchors = torch.log(anchors / (1 - anchors))
    return torch.where(valid_mask, anchors, torch.inf), valid_mask


def _gather_queries(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values [B, L, D], index [B, K] -> [B, K, D]."""
    return values.gather(1, index.unsqueeze(-1).expand(-1, -1, values.shape[-1]))


def _linear(module: nn.Module) -> nn.Linear:
    """``module`` as the ``nn.Linear`` it is (for the type checker)."""
    return cast(nn.Linear, module)


def _aux_outputs(
    logits: Sequence[torch.Tensor] | torch.Tensor, boxes: Sequence[torch.Tensor] | torch.Tensor
) -> list[dict[str, torch.Tensor]]:
    return [{"pred_logits": lg, "pred_boxes": bx} for lg, bx in zip(logits, boxes)]


def _projection(in_channels: int, out_channels: int, kernel_size: int, stride: int) -> nn.Sequential:
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=False)
    return nn.Sequential(OrderedDict([("conv", conv), ("norm", nn.BatchNorm2d(out_channels))]))


@register()
class RTDETRTransformer(nn.Module):
    """RT-DETR decoder head.

    Output of ``forward``: ``pred_logits`` [B, num_queries, num_classes] and ``pred_boxes``
    [B, num_queries, 4] cxcywh normalized; in training also ``aux_outputs`` (each earlier decoder
    layer, then the encoder's top-k selection), ``dn_aux_outputs`` (denoising queries of every
    layer) and ``dn_meta``.
    """

    __share__ = ["num_classes", "eval_spatial_size"]

    anchors: torch.Tensor | None  # buffers (eval anchors for eval_spatial_size)
    valid_mask: torch.Tensor | None

    def __init__(
        self,
        num_classes: int = 80,
        hidden_dim: int = 256,
        num_queries: int = 300,
        position_embed_type: str = "sine",
        feat_channels: Sequence[int] = (512, 1024, 2048),
        feat_strides: Sequence[int] = (8, 16, 32),
        num_levels: int = 3,
        num_decoder_points: int = 4,
        nhead: int = 8,
        num_decoder_layers: int = 6,
        dim_feedforward: int = 1024,
        dropout: float = 0.0,
        activation: str = "relu",
        num_denoising: int = 100,
        label_noise_ratio: float = 0.5,
        box_noise_scale: float = 1.0,
        learnt_init_query: bool = False,
        eval_spatial_size: Sequence[int] | None = None,
        eval_idx: int = -1,
        eps: float = 1e-2,
        aux_loss: bool = True,
    ) -> None:
        super().__init__()
        if position_embed_type not in ("sine", "learned"):
            raise ValueError(f"position_embed_type must be 'sine' or 'learned', got {position_embed_type!r}")
        if len(feat_channels) > num_levels or len(feat_strides) != len(feat_channels):
            raise ValueError(
                f"need len(feat_strides) == len(feat_channels) <= num_levels, got "
                f"feat_channels={list(feat_channels)}, feat_strides={list(feat_strides)}, "
                f"num_levels={num_levels}"
            )
        strides = list(feat_strides)
        while len(strides) < num_levels:  # extra levels each halve the previous resolution
            strides.append(strides[-1] * 2)

        self.hidden_dim = hidden_dim
        self.nhead = nhead
        self.feat_strides = strides
        self.num_levels = num_levels
        self.num_inputs = len(feat_channels)
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.eps = eps
        self.num_decoder_layers = num_decoder_layers
        self.eval_spatial_size = tuple(eval_spatial_size) if eval_spatial_size else None
        self.aux_loss = aux_loss
        self.num_denoising = num_denoising
        self.label_noise_ratio = label_noise_ratio
        self.box_noise_scale = box_noise_scale
        self.learnt_init_query = learnt_init_query

        # Creation order fixes the state-dict order (reference checkpoints) and the RNG draws of
        # the default init, so keep it.
        self.input_proj = self._build_input_proj(list(feat_channels))
        layer = TransformerDecoderLayer(
            hidden_dim, nhead, dim_feedforward, dropout, activation, num_levels, num_decoder_points
        )
        self.decoder = TransformerDecoder(hidden_dim, layer, num_decoder_layers, eval_idx)
        if num_denoising > 0:
            # The extra last row is the padding class of the denoising groups.
            self.denoising_class_embed = nn.Embedding(num_classes + 1, hidden_dim, padding_idx=num_classes)
        if learnt_init_query:
            self.tgt_embed = nn.Embedding(num_queries, hidden_dim)
        self.query_pos_head = MLP(4, 2 * hidden_dim, hidden_dim, num_layers=2)

        self.enc_output = nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.LayerNorm(hidden_dim))
        self.enc_score_head = nn.Linear(hidden_dim, num_classes)
        self.enc_bbox_head = MLP(hidden_dim, hidden_dim, 4, num_layers=3)
        self.dec_score_head = nn.ModuleList(nn.Linear(hidden_dim, num_classes) for _ in range(num_decoder_layers))
        self.dec_bbox_head = nn.ModuleList(
            MLP(hidden_dim, hidden_dim, 4, num_layers=3) for _ in range(num_decoder_layers)
        )

        # Anchors for the eval size are cached; they are derived data, so not checkpointed.
        anchors, valid_mask = (
            generate_anchors(self._eval_spatial_shapes(), eps=eps) if self.eval_spatial_size else (None, None)
        )
        self.register_buffer("anchors", anchors, persistent=False)
        self.register_buffer("valid_mask", valid_mask, persistent=False)
        self._reset_parameters()

    def _build_input_proj(self, feat_channels: list[int]) -> nn.ModuleList:
        projections = nn.ModuleList(_projection(c, self.hidden_dim, 1, 1) for c in feat_channels)
        in_channels = feat_channels[-1]
        for _ in range(self.num_levels - len(feat_channels)):
            projections.append(_projection(in_channels, self.hidden_dim, 3, 2))
            in_channels = self.hidden_dim
        return projections

    def _reset_parameters(self) -> None:
        bias = bias_init_with_prob(0.01)
        init.constant_(self.enc_score_head.bias, bias)
        last_box_layers = [_linear(self.enc_bbox_head.layers[-1])]
        for score_head, bbox_head in zip(self.dec_score_head, self.dec_bbox_head):
            init.constant_(_linear(score_head).bias, bias)
            last_box_layers.append(_linear(cast(MLP, bbox_head).layers[-1]))
        for layer in last_box_layers:
            init.constant_(layer.weight, 0)
            init.constant_(layer.bias, 0)
        init.xavier_uniform_(_linear(self.enc_output[0]).weight)
        if self.learnt_init_query:
            init.xavier_uniform_(self.tgt_embed.weight)
        init.xavier_uniform_(_linear(self.query_pos_head.layers[0]).weight)
        init.xavier_uniform_(_linear(self.query_pos_head.layers[1]).weight)

    def _eval_spatial_shapes(self) -> SpatialShapes:
        if self.eval_spatial_size is None:
            raise RuntimeError("eval_spatial_size is not set: there are no cached eval anchors")
        height, width = self.eval_spatial_size
        return [(int(height / s), int(width / s)) for s in self.feat_strides]

    def _encoder_input(self, feats: Sequence[torch.Tensor]) -> tuple[torch.Tensor, SpatialShapes]:
        """Project and flatten: -> (memory [B, sum(H_l * W_l), C], [(H_l, W_l)] per level)."""
        if len(feats) != self.num_inputs:
            raise ValueError(f"expected {self.num_inputs} feature maps (feat_channels), got {len(feats)}")
        projected = [self.input_proj[i](feat) for i, feat in enumerate(feats)]
        for level in range(len(feats), self.num_levels):
            source = feats[-1] if level == len(feats) else projected[-1]
            projected.append(self.input_proj[level](source))
        spatial_shapes = [(feat.shape[2], feat.shape[3]) for feat in projected]
        memory = torch.cat([feat.flatten(2).permute(0, 2, 1) for feat in projected], 1)
        return memory, spatial_shapes

    def _anchors(self, spatial_shapes: SpatialShapes, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The cached eval anchors when they fit, else anchors built from the actual shapes.

        While exporting or tracing they are always built from the shapes, so the graph keeps
        the feature sizes symbolic (dynamic H/W); the values are the same either way.
        """
        use_cache = (
            not self.training
            and self.eval_spatial_size is not None
            and not is_tracing()
            and [tuple(s) for s in spatial_shapes] == self._eval_spatial_shapes()
        )
        if use_cache and self.anchors is not None and self.valid_mask is not None:
            return self.anchors, self.valid_mask
        return generate_anchors(spatial_shapes, eps=self.eps, device=memory.device)

    def _decoder_input(
        self,
        memory: torch.Tensor,
        spatial_shapes: SpatialShapes,
        dn_content: torch.Tensor | None,
        dn_boxes_unact: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Select the top-scoring anchors as queries.

        Returns:
            (query content [B, T, C], initial boxes before sigmoid [B, T, 4] (detached),
            encoder top-k boxes [B, Q, 4] cxcywh, encoder top-k logits [B, Q, classes]);
            T = denoising queries + num_queries.
        """
        anchors, valid_mask = self._anchors(spatial_shapes, memory)
        # Anchors too close to the border (invalid) see zeroed features, as in the reference.
        memory = valid_mask.to(memory.dtype) * memory
        output_memory = self.enc_output(memory)
        enc_logits = self.enc_score_head(output_memory)
        _, topk_index = torch.topk(enc_logits.max(-1).values, self.num_queries, dim=1)
        enc_topk_logits = _gather_queries(enc_logits, topk_index)

        # The box head only runs on the selected anchors (the reference runs it on all of them
        # and then gathers: same rows, same values, a fraction of the work).
        topk_memory = _gather_queries(output_memory, topk_index)
        topk_anchors = _gather_queries(anchors.expand(memory.shape[0], -1, -1), topk_index)
        ref_points_unact = self.enc_bbox_head(topk_memory) + topk_anchors
        enc_topk_boxes = F.sigmoid(ref_points_unact)

        if self.learnt_init_query:
            content = self.tgt_embed.weight.unsqueeze(0).tile((memory.shape[0], 1, 1))
        else:
            content = topk_memory.detach()
        if dn_content is not None and dn_boxes_unact is not None:
            content = torch.cat([dn_content, content], 1)
            ref_points_unact = torch.cat([dn_boxes_unact, ref_points_unact], 1)
        return content, ref_points_unact.detach(), enc_topk_boxes, enc_topk_logits

    def _denoising_inputs(
        self, targets: Sequence[Mapping[str, torch.Tensor]] | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, dict[str, Any] | None]:
        if not (self.training and self.num_denoising > 0):
            return None, None, None, None
        if not targets:
            raise ValueError(
                "RTDETRTransformer in training mode with num_denoising > 0 needs "
                "targets (one dict with 'labels' and 'boxes' per image)"
            )
        return build_contrastive_denoising_group(
            targets,
            self.num_classes,
            self.num_queries,
            self.denoising_class_embed,
            num_denoising=self.num_denoising,
            label_noise_ratio=self.label_noise_ratio,
            box_noise_scale=self.box_noise_scale,
        )

    def forward(
        self, feats: Sequence[torch.Tensor], targets: Sequence[Mapping[str, torch.Tensor]] | None = None
    ) -> dict[str, Any]:
        """Decode detections.

        Args:
            feats: per level [B, feat_channels[l], H_l, W_l] (the encoder outputs).
            targets: training only: per image ``labels`` [n] int64 and ``boxes`` [n, 4] cxcywh
                normalized; used to build the denoising queries.

        Returns:
            dict with ``pred_logits`` [B, num_queries, num_classes] and ``pred_boxes``
            [B, num_queries, 4] cxcywh normalized; in training with ``aux_loss`` also
            ``aux_outputs`` (list of such dicts: decoder layers 0..n-2, then the encoder top-k),
            ``dn_aux_outputs`` (list per decoder layer, over the denoising queries) and ``dn_meta``.
        """
        memory, spatial_shapes = self._encoder_input(feats)
        dn_content, dn_boxes_unact, attn_mask, dn_meta = self._denoising_inputs(targets)
        content, ref_points_unact, enc_topk_boxes, enc_topk_logits = self._decoder_input(
            memory, spatial_shapes, dn_content, dn_boxes_unact
        )

        out_boxes, out_logits = self.decoder(
            content,
            ref_points_unact,
            memory,
            spatial_shapes,
            self.dec_bbox_head,
            self.dec_score_head,
            self.query_pos_head,
            attn_mask=attn_mask,
        )
        if dn_meta is not None:
            dn_out_boxes, out_boxes = torch.split(out_boxes, dn_meta["dn_num_split"], dim=2)
            dn_out_logits, out_logits = torch.split(out_logits, dn_meta["dn_num_split"], dim=2)

        out: dict[str, Any] = {"pred_logits": out_logits[-1], "pred_boxes": out_boxes[-1]}
        if self.training and self.aux_loss:
            out["aux_outputs"] = _aux_outputs(out_logits[:-1], out_boxes[:-1]) + _aux_outputs(
                [enc_topk_logits], [enc_topk_boxes]
            )
            if dn_meta is not None:
                out["dn_aux_outputs"] = _aux_outputs(dn_out_logits, dn_out_boxes)
                out["dn_meta"] = dn_meta
        return out
