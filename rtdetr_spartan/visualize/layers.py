"""Find a model's layers by name for CAMs and feature maps; a bad name lists the close ones."""

from __future__ import annotations

import difflib
from typing import Callable, Sequence

import torch
from torch import nn

__all__ = [
    "SPATIAL_ROOTS",
    "UnknownLayerError",
    "check_layer_outputs",
    "check_spatial_layers",
    "classifier_layers",
    "resolve_layers",
    "stage_layers",
]

# The parts of a detector (``DetectionScores``) whose outputs are laid out over the image: the
# backbone's maps and the encoder's (maps, and tokens of one feature level). The decoder's
# outputs are object queries, which have no image position, whatever their count.
SPATIAL_ROOTS = ("model.backbone", "model.encoder")


class UnknownLayerError(ValueError):
    """A layer name that is not a submodule of the model (the message lists close names)."""


def resolve_layers(model: nn.Module, names: Sequence[str]) -> list[nn.Module]:
    """The submodules called ``names`` (``model.named_modules()`` names, e.g. ``layers.2.smixer``)."""
    modules = dict(model.named_modules())
    found = []
    for name in names:
        if name not in modules or not name:
            close = difflib.get_close_matches(name, [n for n in modules if n], n=6, cutoff=0.6)
            hint = (
                f"close names: {', '.join(close)}"
                if close
                else "top-level layers: " + ", ".join(n for n, _ in model.named_children())
            )
            raise UnknownLayerError(f"{type(model).__name__} has no layer {name!r}; {hint}")
        found.append(modules[name])
    return found


def check_layer_outputs(model: nn.Module, names: Sequence[str], run: Callable[[], object]) -> dict[str, torch.Size]:
    """Run ``run()`` (a forward of ``model``) and return each named layer's output shape; a layer
    that is not called in the forward, or whose output is not one [B, C, H, W] map or [B, N, C]
    token tensor, is a ValueError naming it."""
    shapes: dict[str, object] = {}
    handles = [
        module.register_forward_hook(lambda _m, _i, out, name=name: shapes.__setitem__(name, out))
        for name, module in zip(names, resolve_layers(model, names))
    ]
    try:
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
    result = {}
    for name in names:
        out = shapes.get(name)
        if out is None:
            raise ValueError(f"layer {name!r} is not called in {type(model).__name__}'s forward; pick another")
        if not isinstance(out, torch.Tensor) or out.dim() not in (3, 4):
            kind = f"a tensor of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(
                f"layer {name!r} outputs {kind}, not a [B, C, H, W] feature map; pick one of its sublayers"
            )
        result[name] = out.shape
    return result


def classifier_layers(model: nn.Module) -> tuple[str, ...]:
    """Default CAM layers of a SpaRTAN classifier: those of the SpaRTAN authors' visualization
    config (stem, first stage's last block and its two mixers) plus the last layer, which their
    Grad-CAM uses."""
    layers = getattr(model, "layers", None)
    if not isinstance(layers, nn.Sequential) or len(layers) < 3:
        raise ValueError(f"no default CAM layers for {type(model).__name__}; name them with --layers")
    return ("conv", "layers.2", "layers.2.smixer", "layers.2.cmixer", f"layers.{len(layers) - 1}")


def stage_layers(model: nn.Module, backbone: str, images: torch.Tensor) -> list[str]:
    """Names of the layers whose outputs ``model.<backbone>`` returns (one map per stage), found
    by running it on ``images``: the last layer that produced each returned tensor."""
    root = model.get_submodule(backbone)
    produced: list[tuple[str, torch.Tensor]] = []
    handles = [
        module.register_forward_hook(
            lambda _m, _i, out, name=name: produced.append((name, out)) if isinstance(out, torch.Tensor) else None
        )
        for name, module in root.named_modules()
        if name
    ]
    try:
        with torch.no_grad():
            maps = root(images)
    finally:
        for handle in handles:
            handle.remove()
    names = []
    for feature in maps if isinstance(maps, (list, tuple)) else [maps]:
        same = [n for n, out in produced if out is feature]
        same = same or [n for n, out in produced if out.shape == feature.shape and torch.equal(out, feature)]
        if not same:
            raise ValueError(f"cannot tell which layer of {backbone} gives its output of shape {tuple(feature.shape)}")
        names.append(f"{backbone}.{same[-1]}")
    return names


def check_spatial_layers(
    shapes: dict[str, torch.Size], levels: Sequence[tuple[int, int]], roots: Sequence[str] = SPATIAL_ROOTS
) -> None:
    """ValueError unless every layer of ``shapes`` (name -> output shape, from
    :func:`check_layer_outputs`) lies under one of ``roots`` and is spatial: a [B, C, H, W] map,
    or [B, N, C] tokens whose count N is the h * w of one feature level of ``levels`` ((h, w)
    of each backbone output)."""
    counts = {h * w: (h, w) for h, w in levels}
    for name, shape in shapes.items():
        shown = name.removeprefix("model.")
        if not any(name == root or name.startswith(root + ".") for root in roots):
            parts = ", ".join(f"{root.removeprefix('model.')}.*" for root in roots)
            raise ValueError(
                f"layer {shown!r} is not a spatial layer: CAMs are drawn of layers under {parts} "
                "(the decoder's outputs are object queries, not image positions)"
            )
        if len(shape) == 3 and shape[1] not in counts:
            grids = ", ".join(f"{h}x{w}" for h, w in levels)
            raise ValueError(
                f"layer {shown!r} outputs {shape[1]} tokens, which match no feature level ({grids}); "
                "pick a layer whose tokens are one level's positions, or a [B, C, H, W] map"
            )
