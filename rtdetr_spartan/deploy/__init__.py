"""Deployment: ONNX export with checks, onnxruntime/OpenVINO/PyTorch predictors, drawing, video
in and out, COCO evaluation of exported models and benchmarking."""

from rtdetr_spartan.deploy.draw import draw_detections
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
from rtdetr_spartan.deploy.metadata import ModelInfo
from rtdetr_spartan.deploy.openvino_runtime import OpenVinoPredictor
from rtdetr_spartan.deploy.runtime import RUNTIMES, OnnxPredictor, Predictor, TorchPredictor, load_predictor, preprocess
from rtdetr_spartan.deploy.types import Detection

__all__ = [
    "INPUT_NAMES",
    "RUNTIMES",
    "OUTPUT_NAMES",
    "DeployModel",
    "Detection",
    "ExportResult",
    "ExportVerificationError",
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
    "preprocess",
    "verify_onnx",
]
