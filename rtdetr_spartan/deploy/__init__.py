"""Deployment: ONNX export with checks, predictors (one :class:`Predictor` base; onnxruntime,
OpenVINO and PyTorch backends, :func:`load_predictor`), inference on images and videos, COCO
evaluation of exported models and INT8 quantization. Measurement is :mod:`rtdetr_spartan.benchmark`;
drawing and image listing are :mod:`rtdetr_spartan.misc.images`."""

from rtdetr_spartan.deploy.export import (
    INPUT_NAMES,
    OUTPUT_NAMES,
    DeployModel,
    ExportResult,
    ExportVerificationError,
    complex_tensor_names,
    export_onnx,
    verify_onnx,
)
from rtdetr_spartan.deploy.from_config import (
    build_deploy_model,
    export_from_config,
    load_config,
    model_info_from_config,
)
from rtdetr_spartan.deploy.loading import RUNTIMES, load_predictor
from rtdetr_spartan.deploy.metadata import ModelInfo
from rtdetr_spartan.deploy.openvino_runtime import OpenVinoPredictor
from rtdetr_spartan.deploy.predictor import ModelFileError, Predictor, preprocess
from rtdetr_spartan.deploy.runtime import OnnxPredictor, onnxruntime_session
from rtdetr_spartan.deploy.torch_predictor import TorchPredictor
from rtdetr_spartan.deploy.types import Detection
from rtdetr_spartan.misc.images import draw_detections

__all__ = [
    "INPUT_NAMES",
    "RUNTIMES",
    "OUTPUT_NAMES",
    "DeployModel",
    "Detection",
    "ExportResult",
    "ExportVerificationError",
    "ModelFileError",
    "ModelInfo",
    "OnnxPredictor",
    "OpenVinoPredictor",
    "Predictor",
    "TorchPredictor",
    "build_deploy_model",
    "complex_tensor_names",
    "draw_detections",
    "export_from_config",
    "export_onnx",
    "load_predictor",
    "load_config",
    "model_info_from_config",
    "onnxruntime_session",
    "preprocess",
    "verify_onnx",
]
