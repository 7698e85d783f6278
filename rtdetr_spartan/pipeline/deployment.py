"""Deployment stages of the quickstart: ONNX export, onnxruntime vs PyTorch on real images,
annotated pictures and latency."""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from rtdetr_spartan.benchmark.latency import time_calls
from rtdetr_spartan.core import YAMLConfig
from rtdetr_spartan.data.image_io import read_rgb
from rtdetr_spartan.deploy.compare import DetectionAgreement, compare_detections
from rtdetr_spartan.deploy.export import DeployModel, export_onnx
from rtdetr_spartan.deploy.from_config import build_deploy_model, model_info_from_config
from rtdetr_spartan.deploy.infer import annotate_image, output_paths
from rtdetr_spartan.deploy.predictor import Predictor, preprocess
from rtdetr_spartan.deploy.runtime import OnnxPredictor
from rtdetr_spartan.deploy.torch_predictor import TorchPredictor
from rtdetr_spartan.misc.images import IMAGE_SUFFIXES, collect_inputs

__all__ = [
    "ExportOutcome",
    "annotate_images",
    "export_detector",
    "agreement_on_images",
    "onnx_latency_ms",
    "predictors",
    "validation_images",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportOutcome:
    """The ONNX file, the PyTorch deploy model it came from, and the exporter's own check
    (largest difference on random inputs)."""

    path: Path
    module: DeployModel
    verify_diff: float | None


def export_detector(cfg: YAMLConfig, checkpoint: Path, path: Path) -> ExportOutcome:
    """Export the config's detector with ``checkpoint``'s weights (EMA preferred) to ``path``.

    The graph takes one image at a time (the demo and the latency are per image; the
    onnxruntime predictor splits larger batches).
    """
    module = build_deploy_model(cfg, checkpoint)
    info = model_info_from_config(cfg, dynamic_batch=False)
    info.extra["checkpoint"] = checkpoint.name
    result = export_onnx(module, path, info)
    return ExportOutcome(path=result.path, module=module, verify_diff=result.max_abs_diff)


def validation_images(folder: Path, count: int) -> list[Path]:
    """The first ``count`` images of ``folder`` in name order."""
    return collect_inputs(folder, IMAGE_SUFFIXES)[:count]


def _load(paths: Sequence[Path]) -> list[Image.Image]:
    """The images as training and evaluation read them (EXIF orientation applied, 16-bit scaled)."""
    return [read_rgb(path) for path in paths]


def agreement_on_images(
    torch_predictor: TorchPredictor, onnx_predictor: OnnxPredictor, paths: Sequence[Path], tolerance: float = 1e-3
) -> DetectionAgreement:
    """How many of PyTorch's detections onnxruntime reproduces on real images within
    ``tolerance`` (scores, and boxes in units of the image size; see ``compare_detections``)."""
    images = _load(paths)
    batch = np.stack([preprocess(image, onnx_predictor.input_size).numpy() for image in images])
    sizes = np.array([image.size for image in images], dtype=np.int64)
    return compare_detections(torch_predictor.run(batch, sizes), onnx_predictor.run(batch, sizes), sizes, tolerance)


def annotate_images(predictor: Predictor, paths: Sequence[Path], out_dir: Path, threshold: float) -> list[Path]:
    """Draw the detections scoring >= ``threshold`` on each image into ``out_dir``, named as
    ``tools/infer.py`` names them (:func:`rtdetr_spartan.deploy.infer.annotate_image`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    targets = output_paths(list(paths), out_dir)
    for path in paths:
        record = annotate_image(predictor, path, targets[path], threshold)
        logger.info(
            "%s: %s", path.name, ", ".join(f"{d['name']} {d['score']:.2f}" for d in record["detections"]) or "nothing"
        )
    return [targets[path] for path in paths]


def onnx_latency_ms(predictor: OnnxPredictor, path: Path, runs: int) -> float:
    """Median milliseconds of one onnxruntime call on one preprocessed image (batch 1)."""
    image = _load([path])[0]
    batch = preprocess(image, predictor.input_size).numpy()[None]
    sizes = np.array([image.size], dtype=np.int64)
    return statistics.median(time_calls(lambda: predictor.run(batch, sizes), runs=runs, warmup=min(3, runs)))


def predictors(outcome: ExportOutcome, cfg: YAMLConfig) -> tuple[TorchPredictor, OnnxPredictor]:
    """The exported graph in onnxruntime, and the module it came from behind the same interface."""
    info = model_info_from_config(cfg, dynamic_batch=False)
    # onnxruntime gets as many threads as PyTorch has, so both compare under the same limit
    return TorchPredictor(outcome.module, info), OnnxPredictor(outcome.path, threads=torch.get_num_threads())
