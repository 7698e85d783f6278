"""Run an exported detector with onnxruntime (or the PyTorch model) on PIL images; OpenVINO
in ``openvino_runtime``, behind the same :class:`Predictor` interface.

Preprocessing is the validation pipeline of the configs (``Resize`` to the model's input size,
``ToImage``, ``ToDtype(float32, scale=True)``; no mean/std), done with the same torchvision
functions, so the numbers equal those of evaluation in PyTorch.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from rtdetr_spartan.data.image_io import to_rgb
from rtdetr_spartan.deploy.metadata import ModelInfo
from rtdetr_spartan.deploy.types import Detection

__all__ = [
    "RUNTIMES",
    "ModelFileError",
    "OnnxPredictor",
    "Predictor",
    "TorchPredictor",
    "load_predictor",
    "model_file",
    "preprocess",
    "session_options",
]

logger = logging.getLogger(__name__)

Outputs = tuple[np.ndarray, np.ndarray, np.ndarray]
_OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")


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
    """Common front end: preprocess, run the detector, keep detections above a threshold."""

    info: ModelInfo

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) images are resized to."""
        return self.info.input_size

    def set_input_size(self, input_size: tuple[int, int]) -> None:
        """Resize inputs to (height, width): any size for a ``--dynamic-size`` export, else only
        the size the graph was exported for."""
        if not self.info.dynamic_size and tuple(input_size) != self.info.input_size:
            raise ValueError(
                f"{getattr(self, 'path', 'the model')} was exported for input size {self.info.input_size}, "
                f"not {tuple(input_size)}; export with --dynamic-size to change it"
            )
        self.info.input_size = (int(input_size[0]), int(input_size[1]))

    @abstractmethod
    def run(self, images: np.ndarray, orig_sizes: np.ndarray) -> Outputs:
        """images float32 [N, 3, H, W]; orig_sizes [N, 2] (w, h) ->
        (labels [N, K] int64, boxes [N, K, 4] XYXY pixels, scores [N, K])."""

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


def session_options(threads: int | None = None, optimization: str = "all", profile_prefix: str | None = None) -> object:
    """onnxruntime ``SessionOptions``: intra-op ``threads`` (None: onnxruntime's default, one per
    core), graph ``optimization`` level, and optional profiling to ``profile_prefix*.json``."""
    import onnxruntime as ort

    if optimization not in _OPTIMIZATION_LEVELS:
        raise ValueError(f"graph optimization must be one of {_OPTIMIZATION_LEVELS}, got {optimization!r}")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return options


class OnnxPredictor(Predictor):
    """An exported model (``tools/export_onnx.py``) in an onnxruntime CPU session.

    Class names, category ids and the input size come from the file's metadata. A graph
    exported with a fixed batch is fed in chunks of that batch.
    """

    def __init__(
        self,
        path: str | Path,
        threads: int | None = None,
        optimization: str = "all",
        input_size: tuple[int, int] | None = None,
        providers: Sequence[str] = ("CPUExecutionProvider",),
    ) -> None:
        import onnxruntime as ort
        from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidGraph, InvalidProtobuf

        self.path = model_file(path)
        if self.path.suffix.lower() == ".xml":
            raise ModelFileError(f"{self.path} is an OpenVINO IR, not an ONNX model; use --runtime openvino")
        try:
            self.session = ort.InferenceSession(
                str(self.path), session_options(threads, optimization), providers=list(providers)
            )
        except (InvalidProtobuf, InvalidGraph, Fail) as err:
            raise ModelFileError(
                f"{self.path} is not an ONNX model onnxruntime can load (export one with tools/export_onnx.py): {err}"
            ) from err
        meta = self.session.get_modelmeta().custom_metadata_map
        self.info = ModelInfo.from_metadata(meta, str(self.path))
        inputs = {i.name: i for i in self.session.get_inputs()}
        missing = {"images", "orig_target_sizes"} - set(inputs)
        if missing:
            raise ValueError(f"{self.path}: inputs {sorted(missing)} missing (has {sorted(inputs)})")
        self._size_dtype = np.float32 if inputs["orig_target_sizes"].type == "tensor(float)" else np.int64
        shape = inputs["images"].shape
        self._fixed_batch = shape[0] if isinstance(shape[0], int) else None
        if input_size is not None:
            self.set_input_size(input_size)

    def run(self, images: np.ndarray, orig_sizes: np.ndarray) -> Outputs:
        step = self._fixed_batch or len(images)
        parts = [
            self.session.run(
                ["labels", "boxes", "scores"],
                {
                    "images": np.ascontiguousarray(images[i : i + step], dtype=np.float32),
                    "orig_target_sizes": np.asarray(orig_sizes[i : i + step], dtype=self._size_dtype),
                },
            )
            for i in range(0, len(images), step)
        ]
        return tuple(np.concatenate([p[j] for p in parts]) for j in range(3))  # type: ignore[return-value]


class TorchPredictor(Predictor):
    """The PyTorch deploy model (``DeployModel``) behind the same interface."""

    def __init__(self, module: torch.nn.Module, info: ModelInfo, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.module = module.to(self.device).eval()
        self.info = info

    @classmethod
    def from_config(
        cls,
        config: str | Path,
        checkpoint: str | Path | None = None,
        overrides: Sequence[str] = (),
        device: str | torch.device = "cpu",
    ) -> TorchPredictor:
        from rtdetr_spartan.deploy.from_config import build_deploy_model, load_config, model_info_from_config

        cfg = load_config(config, overrides)
        return cls(build_deploy_model(cfg, checkpoint), model_info_from_config(cfg), device)

    def run(self, images: np.ndarray, orig_sizes: np.ndarray) -> Outputs:
        with torch.inference_mode():
            outputs = self.module(
                torch.from_numpy(images).to(self.device), torch.from_numpy(np.asarray(orig_sizes)).to(self.device)
            )
        labels, boxes, scores = (t.cpu().numpy() for t in outputs)
        return labels, boxes, scores


RUNTIMES = ("onnxruntime", "openvino")


def load_predictor(
    path: str | Path,
    runtime: str = "onnxruntime",
    threads: int | None = None,
    input_size: tuple[int, int] | None = None,
    precision: str = "float32",
    save_ir: str | Path | None = None,
) -> Predictor:
    """An exported model in ``runtime`` (``onnxruntime`` or ``openvino``). ``precision`` and
    ``save_ir`` are OpenVINO's (onnxruntime runs float32 and has no IR)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    if runtime == "openvino":
        from rtdetr_spartan.deploy.openvino_runtime import OpenVinoPredictor

        return OpenVinoPredictor(path, threads=threads, precision=precision, input_size=input_size, save_ir=save_ir)
    if precision != "float32" or save_ir is not None:
        raise ValueError("precision and save_ir are options of the openvino runtime; onnxruntime runs float32")
    return OnnxPredictor(path, threads=threads, input_size=input_size)
