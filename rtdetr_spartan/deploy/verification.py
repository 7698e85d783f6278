"""Read the query selection next to the detections, from PyTorch and from an exported graph.

The export check (:func:`rtdetr_spartan.deploy.export.verify_onnx`) proves the near-ties it
excuses (:func:`rtdetr_spartan.deploy.compare.compare_with_ties`), so it needs more than the
detections of each runtime: the encoder's selection score of every anchor, the anchors the
decoder selected, and which (query, class) pair each detection is.

- PyTorch: forward hooks read the decoder's ``enc_score_head`` input and output (each anchor's
  features and class logits), ``enc_bbox_head``'s input (the selected anchors' features) and
  the postprocessor's input. The selection is the top-``num_queries`` of the anchor scores, and
  is used only if gathering the features by it gives exactly what the box head saw.
- onnxruntime: the same graph with four intermediate tensors added as outputs: the input and the
  indices of the query-selection TopK (the graph's first TopK, over the N x A anchor scores) and
  of the postprocessor's TopK (the last, over the N x Q*C pair scores). Nothing else changes,
  so the detections are those of the exported graph.

Either side gives None for the selection when the model or the graph has no such parts; the
check then excuses nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from rtdetr_spartan.deploy.compare import Detections, QuerySelection
from rtdetr_spartan.deploy.runtime import onnxruntime_session

__all__ = ["onnx_run", "torch_run"]

logger = logging.getLogger(__name__)


def _deploy_parts(module: nn.Module) -> tuple[nn.Module | None, nn.Module | None]:
    """(decoder, postprocessor) of the DeployModel that ``module`` is or holds: the first
    submodule with ``model`` and ``postprocessor``; the decoder only when it scores anchors
    (``enc_score_head``) and selects ``num_queries`` of them."""
    for sub in module.modules():
        model, postprocessor = getattr(sub, "model", None), getattr(sub, "postprocessor", None)
        if isinstance(model, nn.Module) and isinstance(postprocessor, nn.Module):
            decoder = getattr(model, "decoder", None)
            if (
                isinstance(decoder, nn.Module)
                and hasattr(decoder, "enc_score_head")
                and hasattr(decoder, "num_queries")
            ):
                return decoder, postprocessor
            return None, postprocessor
    return None, None


def _detection_queries(postprocessor: nn.Module, logits: torch.Tensor) -> torch.Tensor:
    """[N, K] the query of each detection that ``postprocessor`` (deploy form) picks from
    ``logits`` [N, Q, C]: it gathers each detection's box from its query, so given the box
    (cx, cy, w, h) = (q, q, 0, 0) for query q and unit image sizes, every picked box is (q, q, q, q)."""
    batch, queries = logits.shape[:2]
    index = torch.arange(queries, dtype=torch.float32).view(1, queries, 1).expand(batch, queries, 2)
    boxes = torch.cat([index, torch.zeros(batch, queries, 2)], dim=-1)
    _, picked, _ = postprocessor({"pred_logits": logits, "pred_boxes": boxes}, torch.ones(batch, 2, dtype=torch.int64))
    return picked[..., 0].round().long()


def _hooks(decoder: nn.Module, postprocessor: nn.Module, captured: dict[str, Any]) -> list[Any]:
    """Record the anchor features and logits (``enc_score_head``), the selected anchors'
    features (``enc_bbox_head``'s input, when there is one) and the decoder outputs."""

    def put(key: str, value: Any) -> None:
        captured[key] = value

    score_head: nn.Module = getattr(decoder, "enc_score_head")  # noqa: B009 (checked in _deploy_parts)
    hooks = [
        score_head.register_forward_hook(lambda _m, args, out: put("anchors", (args[0], out))),
        postprocessor.register_forward_pre_hook(lambda _m, args: put("outputs", args[0])),
    ]
    box_head = getattr(decoder, "enc_bbox_head", None)
    if isinstance(box_head, nn.Module):
        hooks.append(box_head.register_forward_pre_hook(lambda _m, args: put("selected", args[0])))
    return hooks


def _torch_selection(
    decoder: nn.Module, postprocessor: nn.Module, captured: dict[str, Any], labels: np.ndarray
) -> QuerySelection | None:
    """The selection from the recorded tensors: the decoder's top-``num_queries`` of each
    anchor's largest class logit. None when that is not what the decoder gathered (its box head
    saw other anchors' features): the decoder then selects some other way."""
    if "anchors" not in captured or "outputs" not in captured:
        return None
    features, logits = captured["anchors"]  # [N, A, D], [N, A, C]
    scores = logits.max(-1).values
    anchors = torch.topk(scores, int(getattr(decoder, "num_queries")), dim=1).indices  # noqa: B009
    if "selected" in captured:
        gathered = features.gather(1, anchors.unsqueeze(-1).expand(-1, -1, features.shape[-1]))
        if not torch.equal(gathered, captured["selected"]):
            logger.warning("verification: the decoder's query selection is not the top-k of its anchor scores")
            return None
    queries = _detection_queries(postprocessor, captured["outputs"]["pred_logits"])
    return QuerySelection(scores.numpy(), anchors.numpy(), queries.numpy(), labels)


def torch_run(
    module: nn.Module, images: torch.Tensor, orig_target_sizes: torch.Tensor
) -> tuple[Detections, QuerySelection | None]:
    """``module``'s detections (labels [N, K], boxes [N, K, 4] XYXY pixels, scores [N, K]) and
    its decoder's query selection (``pair_scores`` not read: only the other runtime's are used)."""
    decoder, postprocessor = _deploy_parts(module)
    captured: dict[str, Any] = {}
    hooks = _hooks(decoder, postprocessor, captured) if decoder is not None and postprocessor is not None else []
    try:
        with torch.no_grad():
            labels, boxes, scores = (t.numpy() for t in module(images, orig_target_sizes))
    finally:
        for hook in hooks:
            hook.remove()
    selection = None
    if decoder is not None and postprocessor is not None:
        with torch.no_grad():
            selection = _torch_selection(decoder, postprocessor, captured, labels)
    return (labels, boxes, scores), selection


def _topk_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [node for node in model.graph.node if node.op_type == "TopK"]


def _add_outputs(model: onnx.ModelProto, names: Sequence[tuple[str, int]]) -> None:
    existing = {output.name for output in model.graph.output}
    for name, elem_type in names:
        if name not in existing:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, elem_type, None))


def _onnx_selection(values: list[np.ndarray]) -> QuerySelection | None:
    """From the two TopKs' inputs and indices: None unless the first ranks [N, A] anchor scores
    and the last [N, Q * C] pair scores (Q = the first's K)."""
    anchor_scores, anchors, pair_scores, pairs = values
    batch, queries = anchors.shape
    if anchor_scores.ndim != 2 or pair_scores.ndim != 2 or pair_scores.shape[1] % queries:
        return None
    classes = pair_scores.shape[1] // queries
    pair_table = pair_scores.reshape(batch, queries, classes)
    return QuerySelection(anchor_scores, anchors, pairs // classes, pairs % classes, pair_table)


def onnx_run(
    path: str | Path, feeds: dict[str, np.ndarray], output_names: Sequence[str], threads: int | None = None
) -> tuple[Detections, QuerySelection | None]:
    """The graph's ``output_names`` (labels, boxes, scores) for ``feeds`` under onnxruntime (CPU), and its
    query selection read from the query-selection and the postprocessor TopK (see the module
    docstring); None for the selection when the graph does not have both."""
    model = onnx.load(str(path))
    topks = _topk_nodes(model)
    extra: list[str] = []
    if len(topks) >= 2:
        first, last = topks[0], topks[-1]
        extra = [first.input[0], first.output[1], last.input[0], last.output[1]]
        float_type, int_type = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
        _add_outputs(model, list(zip(extra, (float_type, int_type, float_type, int_type))))
    session = onnxruntime_session(model.SerializeToString(), threads)
    values = session.run([*output_names, *extra], feeds)
    detections: Detections = (values[0], values[1], values[2])
    return detections, (_onnx_selection(values[3:]) if extra else None)
