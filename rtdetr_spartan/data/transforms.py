# Follows the design of RT-DETR (lyuwenyu/RT-DETR, Apache-2.0).
"""Detection transforms for YAML ``ops`` lists, on torchvision.transforms.v2.

``Compose(ops)`` builds each ``{type: Name, **kwargs}`` entry from the registry. The
reference's torchvision-0.15 names (``SanitizeBoundingBox``, ``ToImageTensor``,
``ConvertDtype``, ``ConvertBox``) are registered as aliases so its configs port unchanged.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Mapping, Sequence

import torch
import torchvision.transforms.v2 as T
from torchvision import tv_tensors

from rtdetr_spartan.core import register
from rtdetr_spartan.core.registry import lookup

__all__ = [
    "Compose",
    "ConvertBoxes",
    "RandomIoUCrop",
    "SanitizeBoundingBoxes",
    "ToDtype",
    "per_box_fields",
]

# Plain torchvision transforms, registered under their own names.
for _cls in (
    T.RandomPhotometricDistort,
    T.RandomZoomOut,
    T.RandomHorizontalFlip,
    T.Resize,
    T.ToImage,
    T.RandomCrop,
    T.Normalize,
):
    register(_cls)
register(T.ToImage, name="ToImageTensor")  # torchvision 0.15 name used by reference configs

# Per-box tensors of a target dict that must be filtered together with the boxes.
PER_BOX_KEYS: tuple[str, ...] = ("labels", "area", "iscrowd")


def per_box_fields(inputs: Any) -> tuple[torch.Tensor, ...] | None:
    """``labels_getter`` for SanitizeBoundingBoxes: the target's ``labels``, ``area`` and
    ``iscrowd`` tensors (those present), so they stay aligned with the kept boxes."""
    target = inputs[1] if isinstance(inputs, (tuple, list)) and len(inputs) > 1 else inputs
    if not isinstance(target, Mapping):
        return None
    fields = tuple(target[k] for k in PER_BOX_KEYS if isinstance(target.get(k), torch.Tensor))
    return fields or None


@register()
class SanitizeBoundingBoxes(T.SanitizeBoundingBoxes):
    """torchvision's SanitizeBoundingBoxes; by default filters ``labels``, ``area`` and
    ``iscrowd`` of the target dict together with the boxes (see :func:`per_box_fields`)."""

    def __init__(
        self,
        min_size: float = 1.0,
        min_area: float = 1.0,
        labels_getter: Callable[[Any], Any] | str | None = per_box_fields,
    ) -> None:
        super().__init__(min_size=min_size, min_area=min_area, labels_getter=labels_getter)


register(SanitizeBoundingBoxes, name="SanitizeBoundingBox")


@register()
class RandomIoUCrop(T.RandomIoUCrop):
    """torchvision's RandomIoUCrop, applied with probability ``p`` (as in the reference).

    Samples without boxes pass through unchanged. Follow it with SanitizeBoundingBoxes: boxes
    whose centre falls outside the crop are zeroed, not removed.
    """

    def __init__(
        self,
        min_scale: float = 0.3,
        max_scale: float = 1.0,
        min_aspect_ratio: float = 0.5,
        max_aspect_ratio: float = 2.0,
        sampler_options: Sequence[float] | None = None,
        trials: int = 40,
        p: float = 1.0,
    ) -> None:
        options = list(sampler_options) if sampler_options is not None else None
        super().__init__(min_scale, max_scale, min_aspect_ratio, max_aspect_ratio, options, trials)
        self.p = p

    def forward(self, *inputs: Any) -> Any:
        sample = inputs if len(inputs) > 1 else inputs[0]
        if torch.rand(1).item() >= self.p or not _has_boxes(sample):
            return sample
        return super().forward(*inputs)


def _has_boxes(sample: Any) -> bool:
    """Whether a (possibly nested) sample holds a non-empty BoundingBoxes."""
    if isinstance(sample, tv_tensors.BoundingBoxes):
        return sample.shape[0] > 0
    if isinstance(sample, Mapping):
        return any(_has_boxes(v) for v in sample.values())
    if isinstance(sample, (tuple, list)):
        return any(_has_boxes(v) for v in sample)
    return False


_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "uint8": torch.uint8,
}


@register()
class ToDtype(T.ToDtype):
    """Convert images (not boxes) to ``dtype``; ``scale`` maps uint8 0..255 to float 0..1.

    ``dtype`` may be a name from YAML (``'float32'``). Unlike torchvision, ``scale`` defaults to
    True, which is what a detection pipeline wants.
    """

    def __init__(self, dtype: str | torch.dtype = "float32", scale: bool = True) -> None:
        if isinstance(dtype, str):
            if dtype not in _DTYPES:
                raise ValueError(f"ToDtype: unknown dtype '{dtype}'; expected one of {sorted(_DTYPES)}")
            dtype = _DTYPES[dtype]
        super().__init__(dtype=dtype, scale=scale)


@register()
class ConvertDtype(ToDtype):
    """torchvision 0.15 name: image to float32 in [0, 1]."""

    def __init__(self, dtype: str | torch.dtype = "float32") -> None:
        super().__init__(dtype=dtype, scale=True)


@register()
class ConvertBoxes(T.Transform):
    """Convert bounding boxes to ``fmt`` (``'xyxy'``, ``'xywh'`` or ``'cxcywh'``; empty keeps
    the format) and, with ``normalize``, divide by the canvas (w, h, w, h) so they lie in [0, 1].

    The result stays a ``tv_tensors.BoundingBoxes`` whose ``canvas_size`` is still in pixels.
    """

    _transformed_types = (tv_tensors.BoundingBoxes,)
    _FORMATS: dict[str, tv_tensors.BoundingBoxFormat] = {
        "xyxy": tv_tensors.BoundingBoxFormat.XYXY,
        "xywh": tv_tensors.BoundingBoxFormat.XYWH,
        "cxcywh": tv_tensors.BoundingBoxFormat.CXCYWH,
    }

    def __init__(self, fmt: str = "", normalize: bool = False) -> None:
        super().__init__()
        if fmt and fmt.lower() not in self._FORMATS:
            raise ValueError(f"ConvertBoxes: unknown fmt '{fmt}'; expected one of {sorted(self._FORMATS)} or ''")
        self.fmt = fmt.lower()
        self.normalize = normalize

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        boxes = inpt
        if self.fmt:
            boxes = T.functional.convert_bounding_box_format(boxes, new_format=self._FORMATS[self.fmt])
        if self.normalize:
            h, w = boxes.canvas_size
            scale = torch.tensor([w, h, w, h], dtype=boxes.dtype, device=boxes.device)
            boxes = tv_tensors.wrap(boxes.as_subclass(torch.Tensor) / scale, like=boxes)
        return boxes


@register()
class ConvertBox(ConvertBoxes):
    """Reference name and arguments (``out_fmt``, ``normalize``) of :class:`ConvertBoxes`."""

    def __init__(self, out_fmt: str = "", normalize: bool = False) -> None:
        super().__init__(fmt=out_fmt, normalize=normalize)


@register()
class Compose(T.Compose):
    """A pipeline built from ``ops``: ``{type: Name, **kwargs}`` dicts (looked up in the
    registry) or ready transforms. ``ops=None`` or empty means identity."""

    def __init__(self, ops: Sequence[Mapping[str, Any] | Callable[..., Any]] | None = None) -> None:
        transforms = [_build_op(i, op) for i, op in enumerate(ops or ())]
        super().__init__(transforms or [T.Identity()])


def _build_op(index: int, op: Mapping[str, Any] | Callable[..., Any]) -> Callable[..., Any]:
    if callable(op) and not isinstance(op, Mapping):
        return op
    if not isinstance(op, Mapping) or "type" not in op:
        raise ValueError(f"transforms ops[{index}]: expected a {{type: Name, ...}} dict or a transform, got {op!r}")
    kwargs = copy.deepcopy(dict(op))
    name = kwargs.pop("type")
    try:
        cls = lookup(name)
    except KeyError as err:
        raise KeyError(f"transforms ops[{index}]: {err.args[0]}") from None
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise type(err)(f"transforms ops[{index}] ({name}): {err}") from err
