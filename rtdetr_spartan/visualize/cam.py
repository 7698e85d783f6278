"""Class activation maps with the ``grad-cam`` package (the SpaRTAN authors' choice).

Classifier: the map of one class's logit (``ClassifierOutputTarget``). Detector: the map of the
top detections' scores. The detector and its postprocessor are wrapped so that grad-cam sees a
torchvision-style detector (per image a dict of boxes, labels, scores) and its
``FasterRCNNBoxScoreTarget`` scores each chosen detection by the score (and box overlap) of the
detection that matches it. Token outputs ([B, H*W, C], the encoder's transformer layer) are laid
back out as maps by a reshape transform.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget, FasterRCNNBoxScoreTarget
from torch import nn

from rtdetr_spartan.visualize.layers import check_layer_outputs, check_spatial_layers, resolve_layers

__all__ = [
    "METHODS",
    "ClassifierCam",
    "DetectionScores",
    "DetectorCam",
    "classifier_cam",
    "detector_cam",
    "tokens_to_map",
]

METHODS = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "eigencam": EigenCAM}
_STRIDES = (4, 8, 16, 32, 64)


def tokens_to_map(height: int, width: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """A grad-cam ``reshape_transform`` for a ``height`` x ``width`` input: [B, C, h, w] maps
    pass; [B, N, C] tokens of a stride-s grid (N = H/s * W/s) become [B, C, H/s, W/s]."""

    def transform(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.dim() == 4:
            return tensor
        batch, tokens, channels = tensor.shape
        for stride in _STRIDES:
            h, w = -(-height // stride), -(-width // stride)
            if h * w == tokens:
                return tensor.transpose(1, 2).reshape(batch, channels, h, w)
        raise ValueError(f"{tokens} tokens match no stride {_STRIDES} grid of a {height}x{width} input")

    return transform


def _cam(
    method: str, model: nn.Module, layer: nn.Module, images: torch.Tensor, targets: Sequence[Callable]
) -> np.ndarray:
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    images = images.detach().clone().requires_grad_(True)  # gradients reach frozen layers too
    reshape = tokens_to_map(images.shape[-2], images.shape[-1])
    with METHODS[method](model=model, target_layers=[layer], reshape_transform=reshape) as cam:
        return cam(input_tensor=images, targets=list(targets))[0]


@dataclass
class ClassifierCam:
    """``cams``: per layer name a map [H, W] in [0, 1] at the input size."""

    target: int
    predicted: int
    probability: float
    cams: dict[str, np.ndarray] = field(default_factory=dict)


def classifier_cam(
    model: nn.Module,
    image: torch.Tensor,
    layers: Sequence[str],
    method: str = "gradcam",
    class_index: int | None = None,
) -> ClassifierCam:
    """CAMs of one preprocessed ``image`` [1, 3, H, W] for ``class_index`` (default: the
    predicted class), one per layer. ``model`` returns logits [B, classes]."""
    model.eval()
    resolve_layers(model, layers)
    check_layer_outputs(model, layers, lambda: model(image))
    with torch.no_grad():
        probabilities = model(image).softmax(-1)[0]
    predicted = int(probabilities.argmax())
    if class_index is not None and not 0 <= class_index < probabilities.numel():
        raise ValueError(f"class {class_index} is out of range: the model has {probabilities.numel()} classes")
    target = predicted if class_index is None else class_index
    result = ClassifierCam(target, predicted, float(probabilities[predicted]))
    for name, layer in zip(layers, resolve_layers(model, layers)):
        result.cams[name] = _cam(method, model, layer, image, [ClassifierOutputTarget(target)])
    return result


class DetectionScores(nn.Module):
    """A detector and its deploy-mode postprocessor as grad-cam sees detectors: images [B, 3, H, W]
    -> per image dict(boxes [K, 4] XYXY pixels of the input, labels [K] contiguous, scores [K])."""

    def __init__(self, model: nn.Module, postprocessor: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.postprocessor = postprocessor

    def forward(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """images [B, 3, H, W] in [0, 1] -> B dicts of boxes, labels, scores."""
        height, width = images.shape[-2:]
        sizes = torch.tensor([[width, height]] * images.shape[0], device=images.device)
        labels, boxes, scores = self.postprocessor(self.model(images), sizes)
        return [{"boxes": b, "labels": lab, "scores": s} for lab, b, s in zip(labels, boxes, scores)]


@dataclass
class DetectorCam:
    """The chosen detections (boxes in input pixels) and per layer the map [H, W] in [0, 1] of
    their scores."""

    labels: list[int]
    scores: list[float]
    boxes: list[list[float]]
    cams: dict[str, np.ndarray] = field(default_factory=dict)


def detector_cam(
    detector: DetectionScores,
    image: torch.Tensor,
    layers: Sequence[str],
    method: str = "gradcam",
    top_k: int = 5,
    threshold: float = 0.0,
) -> DetectorCam:
    """CAMs of one preprocessed ``image`` [1, 3, H, W] for the (at most) ``top_k`` best
    detections scoring >= ``threshold``, one map per layer (names relative to ``detector``,
    e.g. ``model.backbone.layers.19``). ``top_k`` must be >= 1; layers must be spatial (see
    :func:`~rtdetr_spartan.visualize.layers.check_spatial_layers`)."""
    if top_k < 1:
        raise ValueError(f"top_k (--top-k) must be >= 1 (the detections the CAM explains), got {top_k}")
    detector.eval()
    resolve_layers(detector, layers)
    shapes = check_layer_outputs(detector, layers, lambda: detector(image))
    with torch.no_grad():
        maps = detector.model.get_submodule("backbone")(image)
    levels = [(int(m.shape[-2]), int(m.shape[-1])) for m in (maps if isinstance(maps, (list, tuple)) else [maps])]
    check_spatial_layers(shapes, levels)
    with torch.no_grad():
        found = detector(image)[0]
    order = found["scores"].argsort(descending=True)[:top_k]
    order = order[found["scores"][order] >= threshold]
    chosen = DetectorCam(
        labels=found["labels"][order].tolist(),
        scores=found["scores"][order].tolist(),
        boxes=found["boxes"][order].tolist(),
    )
    if not chosen.labels:
        return chosen
    target = FasterRCNNBoxScoreTarget(labels=chosen.labels, bounding_boxes=found["boxes"][order].detach().numpy())
    for name, layer in zip(layers, resolve_layers(detector, layers)):
        chosen.cams[name] = _cam(method, detector, layer, image, [target])
    return chosen
