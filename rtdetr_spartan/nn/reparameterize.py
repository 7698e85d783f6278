"""One reparameterization protocol for every block with a faster inference form (as timm's
``reparameterize_model`` with MobileOne / RepVGG / FastViT blocks).

A block that has one defines ``reparameterize(export: ExportForm | None = None) -> nn.Module``:
it returns the module to use in its place, its inference form (eval mode, norms folded,
weights precomputed), or with ``export`` its ONNX export form. A block that fuses in place
(the encoder's ``RepVggBlock``) returns itself; forms with nothing left to convert have no
``reparameterize`` or return themselves, so converting twice changes nothing. :func:`reparameterize_model` is the one
walker that applies them: ``RTDETR.deploy()``, the ONNX export and the benchmarks use it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["ExportForm", "reparameterize_model"]


@dataclass(frozen=True)
class ExportForm:
    """Ask for the ONNX export form. ``fixed_shapes``: the graph has no dynamic axes, so the
    form may expand broadcast factors to full maps (faster in onnxruntime; the graph then
    serves only the traced input size)."""

    fixed_shapes: bool


def _walk(module: nn.Module, export: ExportForm | None) -> nn.Module:
    convert = getattr(module, "reparameterize", None)
    if callable(convert):
        return convert(export)
    for name, child in module.named_children():
        converted = _walk(child, export)
        if converted is not child:
            setattr(module, name, converted)
    return module


@torch.no_grad()
def reparameterize_model(model: nn.Module, *, export: ExportForm | None = None, inplace: bool = True) -> nn.Module:
    """Switch ``model`` to eval mode and replace every module below it (``model`` included)
    that has ``reparameterize()`` by what that returns; modules without one are walked into.

    In place by default (RT-DETR's ``deploy()`` convention): the state dict is in the inference
    layout afterwards, so save training weights before. ``inplace=False`` converts a deep copy
    and leaves ``model`` as it is. Returns the converted model (``model`` itself unless
    ``model`` is such a block).
    """
    if not inplace:
        model = copy.deepcopy(model)
    return _walk(model.eval(), export)
