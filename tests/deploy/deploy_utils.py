"""Shared pieces of the deployment tests: the two detector configs and small-model exports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from rtdetr_spartan.deploy.compare import DetectionAgreement, compare_detections, paired_differences
from rtdetr_spartan.deploy.export import DeployModel, ExportResult, export_onnx
from rtdetr_spartan.deploy.from_config import build_deploy_model, load_config, model_info_from_config
from rtdetr_spartan.deploy.metadata import ModelInfo
from rtdetr_spartan.deploy.predictor import Outputs, Predictor

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "rtdetr"
R18_CONFIG = CONFIGS / "rtdetr_r18vd_6x_coco.yml"
SPARTAN_T_CONFIG = CONFIGS / "rtdetr_spartan_t_6x_coco.yml"


def spartan_t_config() -> tuple[Path, tuple[str, ...]]:
    """(config file, overrides) of the SpaRTAN-T detector (SpaRTAN-T backbone, R18 head)."""
    return SPARTAN_T_CONFIG, ()


def export_config(
    config: Path,
    overrides: tuple[str, ...] | list[str],
    path: Path,
    size: int,
    dynamic_batch: bool = True,
    dynamic_size: bool = False,
    seed: int = 0,
) -> tuple[DeployModel, ExportResult]:
    """Freshly initialised (seeded) deploy model of ``config`` and its export at ``size``."""
    torch.manual_seed(seed)
    cfg = load_config(config, overrides)
    module = build_deploy_model(cfg)
    info = model_info_from_config(cfg, (size, size), dynamic_batch=dynamic_batch, dynamic_size=dynamic_size)
    return module, export_onnx(module, path, info, verify=False)


def assert_detections_agree(
    ref: tuple[np.ndarray, np.ndarray, np.ndarray],
    got: tuple[np.ndarray, np.ndarray, np.ndarray],
    sizes: np.ndarray,
    tolerance: float = 1e-4,
    min_fraction: float = 0.95,
) -> DetectionAgreement:
    """Assert that ``got`` reproduces at least ``min_fraction`` of ``ref``'s detections within
    ``tolerance`` (same label; score, and box in units of the image size).

    Freshly initialised detectors score all their detections within ~3e-4 of each other, so
    CPUs (AVX-512 / AVX2) and thread counts break near-ties differently: a detection may be
    another query's in one run. Neither the worst pair nor a rank-based "high-scoring" subset is
    stable for such weights; the share of reproduced detections is. A wrong graph or wrong
    scaling moves (nearly) all of them.
    """
    agreement = compare_detections(ref, got, sizes, tolerance, top_fraction=0.0, score_threshold=2.0)
    assert agreement.matched_fraction >= min_fraction, agreement.describe()
    return agreement


def min_matched_fraction(
    ref: tuple[np.ndarray, np.ndarray, np.ndarray],
    got: tuple[np.ndarray, np.ndarray, np.ndarray],
    sizes: np.ndarray,
    tolerance: float = 1e-3,
) -> float:
    """Smallest per-image share of ``ref``'s detections whose one-to-one partner in ``got`` lies
    within ``tolerance`` (``deploy.compare.paired_differences``)."""
    return float((paired_differences(ref, got, sizes) <= tolerance).mean(axis=1).min())


class FixedBoxes(Predictor):
    """Predicts the same boxes on every image: ``boxes`` [K, 4] XYXY pixels with ``labels`` [K]."""

    def __init__(self, info: ModelInfo, labels: list[int], boxes: list[list[float]]) -> None:
        self.info = info
        self._labels, self._boxes = np.array(labels), np.array(boxes, dtype=np.float32)
        self.bind_graph(("images", "orig_target_sizes"), fixed_batch=None, sizes_are_float=False)

    def infer(self, images: np.ndarray, orig_sizes: np.ndarray) -> Outputs:
        n = len(images)
        scores = np.linspace(0.9, 0.5, len(self._labels), dtype=np.float32)
        return np.tile(self._labels, (n, 1)), np.tile(self._boxes, (n, 1, 1)), np.tile(scores, (n, 1))
