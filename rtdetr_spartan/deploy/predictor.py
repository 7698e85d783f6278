"""The front end every predictor shares: preprocessing, input checks, fixed-batch chunking and
detections above a threshold. A backend (onnxruntime in ``runtime``, OpenVINO in
``openvino_runtime``, the PyTorch deploy model in ``torch_predictor``) supplies only
:meth:`Predictor.infer`, one call of its graph on one batch.

Preprocessing is the validation pipeline of the configs (``Resize`` to the model's input size,
``ToImage``, ``ToDtype(float32, scale=True)``; no mean/std), done with the same torchvision
functions, so the numbers equal those of evaluation in PyTorch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from rtdetr_spartan.data.image_io import to_rgb
from rtdetr_spartan.deploy.metadata import ModelInfo
from rtdetr_spartan.deploy.types import Detection

__all__ = ["GRAPH_INPUTS", "ModelFileError", "Outputs", "Predictor", "model_file", "preprocess"]

Outputs = tuple[np.ndarray, np.ndarray, np.ndarray]
GRAPH_INPUTS = ("images", "orig_target_sizes")


class ModelFileError(ValueError):
    """A model path that is a folder, or a file the runtime cannot read; the message names it."""


def model_file(path: str | Path) -> Path:
    """``path`` as a model file: FileNotFoundError when it does not exist; :class:`ModelFileError`
    for a folder, naming the model files it holds."""
    path = Path(path)
    if path.is_dir():
        held = sorted(p.name for p in path.iterdir() if p.suffix.lower() in (".onnx", ".xml") and p.is_file())
        hint = f"it holds {', '.join(held)}: pass {path / held[0]}" if held else "it holds no .onnx or .xml file"
        raise ModelFileError(f"model {path} is a folder, not a model file; {hint}")
    if not path.is_file():
        raise FileNotFoundError(f"model {path} does not exist")
    return path


def preprocess(image: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    """``image`` -> float32 [3, H, W] in [0, 1] at ``size`` = (H, W), exactly as validation.
    The image is first taken as :func:`~rtdetr_spartan.data.image_io.to_rgb` gives it (EXIF
    orientation applied, 16-bit scaled to 8), as training and evaluation read their files."""
    return _rgb_tensor(to_rgb(image), size)


def _rgb_tensor(rgb: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    """An 8-bit RGB image already oriented -> float32 [3, H, W] in [0, 1] at ``size``."""
    resized = TF.resize(rgb, [int(size[0]), int(size[1])])
    return TF.to_dtype(TF.to_image(resized), torch.float32, scale=True)


class Predictor(ABC):
    """Preprocess, run the detector in batches its graph accepts, keep detections above a threshold.

    A subclass sets :attr:`info` and calls :meth:`bind_graph` with what its graph declares, then
    implements :meth:`infer`; :meth:`run` checks the inputs and feeds :meth:`infer` in chunks of
    the graph's fixed batch (all at once when the batch axis is dynamic).
    """

    info: ModelInfo
    path: Path | None = None
    _fixed_batch: int | None = None
    _size_dtype: type = np.int64

    def bind_graph(
        self,
        input_names: Collection[str],
        fixed_batch: int | None,
        sizes_are_float: bool,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        """Check the graph's inputs (``images`` and ``orig_target_sizes``) and record its fixed
        batch (None: dynamic) and the dtype of its sizes input; ``input_size`` as :meth:`set_input_size`."""
        missing = set(GRAPH_INPUTS) - set(input_names)
        if missing:
            raise ValueError(f"{self.source}: inputs {sorted(missing)} missing (has {sorted(input_names)})")
        self._fixed_batch = fixed_batch
        self._size_dtype = np.float32 if sizes_are_float else np.int64
        if input_size is not None:
            self.set_input_size(input_size)

    @property
    def source(self) -> str:
        """The model file, for messages (``the model`` for one held in memory)."""
        return str(self.path) if self.path is not None else "the model"

    @property
    def fixed_batch(self) -> int | None:
        """The batch the graph was exported with; None when its batch axis is dynamic."""
        return self._fixed_batch

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) images are resized to."""
        return self.info.input_size

    def set_input_size(self, input_size: tuple[int, int]) -> None:
        """Resize inputs to (height, width): any size for a ``--dynamic-size`` export, else only
        the size the graph was exported for."""
        if not self.info.dynamic_size and tuple(input_size) != self.info.input_size:
            raise ValueError(
                f"{self.source} was exported for input size {self.info.input_size}, "
                f"not {tuple(input_size)}; export with --dynamic-size to change it"
            )
        self.info.input_size = (int(input_size[0]), int(input_size[1]))

    @abstractmethod
    def infer(self, images: np.ndarray, orig_sizes: np.ndarray) -> Outputs:
        """One call of the backend on one batch the graph accepts: images float32 [n, 3, H, W]
        (C-contiguous), orig_sizes [n, 2] (w, h) in the graph's dtype -> (labels, boxes, scores)."""

    def run(self, images: np.ndarray, orig_sizes: np.ndarray) -> Outputs:
        """images float32 [N, 3, H, W]; orig_sizes [N, 2] (w, h) ->
        (labels [N, K] int64, boxes [N, K, 4] XYXY pixels float32, scores [N, K] float32)."""
        images = np.asarray(images)
        orig_sizes = np.asarray(orig_sizes)
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"{self.source}: images must be [N, 3, H, W], got shape {images.shape}")
        if orig_sizes.shape != (len(images), 2):
            raise ValueError(
                f"{self.source}: orig_sizes must be [N, 2] (width, height) for {len(images)} images, "
                f"got shape {orig_sizes.shape}"
            )
        if len(images) == 0:
            raise ValueError(f"{self.source}: run needs at least one image (predict([]) gives [])")
        step = self._fixed_batch or len(images)
        parts = [
            self.infer(
                np.ascontiguousarray(images[i : i + step], dtype=np.float32),
                np.ascontiguousarray(orig_sizes[i : i + step], dtype=self._size_dtype),
            )
            for i in range(0, len(images), step)
        ]
        labels, boxes, scores = (np.concatenate([p[j] for p in parts]) for j in range(3))
        return labels.astype(np.int64, copy=False), boxes.astype(np.float32, copy=False), scores.astype(np.float32)

    def predict(self, images: Sequence[Image.Image], threshold: float = 0.5) -> list[list[Detection]]:
        """Detections scoring >= ``threshold``, per image, best first; boxes in the image's pixels
        as displayed (EXIF orientation applied), clipped to the image (as RT-DETR's postprocessor
        users expect; COCO evaluation with :meth:`run` keeps the model's raw boxes, as in training)."""
        if not images:
            return []
        images = [to_rgb(image) for image in images]  # sizes below are those of the displayed image
        batch = np.stack([_rgb_tensor(image, self.input_size).numpy() for image in images])
        sizes = np.array([image.size for image in images], dtype=np.int64)
        labels, boxes, scores = self.run(batch, sizes)
        return [self.detections(labels[i], boxes[i], scores[i], threshold, images[i].size) for i in range(len(images))]

    def detections(
        self,
        labels: np.ndarray,
        boxes: np.ndarray,
        scores: np.ndarray,
        threshold: float,
        image_size: tuple[int, int] | None = None,
    ) -> list[Detection]:
        """One image's outputs (labels [K], boxes [K, 4] XYXY, scores [K]) as :class:`Detection` s;
        with ``image_size`` (width, height) boxes are clipped to the image."""
        keep = np.nonzero(scores >= threshold)[0]
        keep = keep[np.argsort(-scores[keep], kind="stable")]
        if image_size is not None:
            width, height = image_size
            boxes = np.clip(boxes, 0.0, np.array([width, height, width, height], dtype=boxes.dtype))
        return [
            Detection(
                label=int(labels[k]),
                category_id=self.info.category_id(int(labels[k])),
                name=self.info.class_name(int(labels[k])),
                score=float(scores[k]),
                box=(float(boxes[k, 0]), float(boxes[k, 1]), float(boxes[k, 2]), float(boxes[k, 3])),
            )
            for k in keep
        ]
