"""Inspection: Grad-CAM (grad-cam package) of classifiers and detectors, backbone feature-map
grids, and a CAM logger for training."""

from rtdetr_spartan.visualize.cam import METHODS, DetectionScores, classifier_cam, detector_cam, tokens_to_map
from rtdetr_spartan.visualize.cam_logger import CamLogger
from rtdetr_spartan.visualize.layers import UnknownLayerError, classifier_layers, resolve_layers, stage_layers
from rtdetr_spartan.visualize.run import visualize

__all__ = [
    "METHODS",
    "CamLogger",
    "DetectionScores",
    "UnknownLayerError",
    "classifier_cam",
    "classifier_layers",
    "detector_cam",
    "resolve_layers",
    "stage_layers",
    "tokens_to_map",
    "visualize",
]
