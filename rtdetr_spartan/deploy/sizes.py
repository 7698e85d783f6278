"""Which input sizes an RT-DETR detector can be exported (and run) at.

The backbone, encoder and decoder declare their feature strides (``out_strides`` /
``feat_strides``, the decoder's including its extra levels); an input side must be a positive
multiple of the largest, and the feature maps must hold at least as many anchors as the decoder
selects queries (its top-k would fail otherwise).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = ["InputSizeError", "check_input_size", "largest_stride"]


class InputSizeError(ValueError):
    """An export size the model cannot run: each side must be a positive multiple of the model's
    largest stride, and the feature maps must hold at least as many anchors as the decoder
    selects queries. ``str()`` names ``argument``; :meth:`message` names another (a CLI flag)."""

    def __init__(self, size: Sequence[int], stride: int, reason: str, argument: str = "input_size") -> None:
        self.size, self.stride, self.reason = tuple(size), stride, reason
        super().__init__(self.message(argument))

    def message(self, argument: str) -> str:
        return f"{argument} {' '.join(str(side) for side in self.size)}: {self.reason}"


def largest_stride(module: nn.Module) -> int | None:
    """The largest feature stride that ``module`` (or any submodule) declares in its output
    contract (``out_strides`` of backbones and encoders, ``feat_strides`` of the decoder,
    which includes its extra levels); None when none declares one."""
    strides = [
        int(stride)
        for sub in module.modules()
        for key in ("out_strides", "feat_strides")
        for stride in (getattr(sub, key, None) or ())
    ]
    return max(strides) if strides else None


def _decoder_needs(module: nn.Module) -> tuple[list[int], int] | None:
    """(feature strides, number of queries) of the RT-DETR decoder in ``module``, if any."""
    for sub in module.modules():
        strides, queries = getattr(sub, "feat_strides", None), getattr(sub, "num_queries", None)
        if strides and isinstance(queries, int) and hasattr(sub, "enc_score_head"):
            return [int(s) for s in strides], queries
    return None


def _smallest_side(strides: list[int], queries: int, stride: int) -> int:
    """The smallest square side, a multiple of ``stride``, with at least ``queries`` anchors."""
    side = stride
    while sum((side // s) ** 2 for s in strides) < queries:
        side += stride
    return side


def check_input_size(size: Sequence[int], module: nn.Module, argument: str = "input_size") -> None:
    """Raise :class:`InputSizeError` (naming ``argument``) unless ``size`` = (H, W) is positive,
    a multiple of :func:`largest_stride` on both sides, and large enough for the decoder's
    query selection (one anchor per cell of every level, at least ``num_queries`` in all)."""
    stride = largest_stride(module) or 1
    if len(size) != 2:
        raise InputSizeError(size, stride, "expected two sides, height and width", argument)
    if any(int(side) != side or side <= 0 or side % stride for side in size):
        lower = " ".join(str(max(stride, int(side) // stride * stride)) for side in size)
        upper = " ".join(str(max(stride, -(-int(side) // stride) * stride)) for side in size)
        nearest = lower if lower == upper else f"{lower} or {upper}"
        reason = f"height and width must be positive multiples of the model's largest stride {stride}, e.g. {nearest}"
        raise InputSizeError(size, stride, reason, argument)
    needs = _decoder_needs(module)
    if needs is None:
        return
    strides, queries = needs
    anchors = sum((size[0] // s) * (size[1] // s) for s in strides)
    if anchors < queries:
        side = _smallest_side(strides, queries, stride)
        raise InputSizeError(
            size,
            stride,
            f"gives {anchors} anchors, fewer than the decoder's {queries} queries; "
            f"use at least {side} {side} (or a config with a smaller num_queries)",
            argument,
        )
