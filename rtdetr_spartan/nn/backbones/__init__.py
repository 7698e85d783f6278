"""Backbones; importing the package registers them (``PResNet``, ``SpaRTAN``, ``SpaRTANClassifier``).
SpaRTAN's inference and ONNX export forms: ``convert_for_inference``, ``convert_for_export``."""

from rtdetr_spartan.nn.backbones.presnet import PResNet
from rtdetr_spartan.nn.backbones.spartan import SpaRTAN, SpaRTANClassifier, SpaRTANVariant
from rtdetr_spartan.nn.backbones.spartan_export import convert_for_export
from rtdetr_spartan.nn.backbones.spartan_inference import convert_for_inference

__all__ = ["PResNet", "SpaRTAN", "SpaRTANClassifier", "SpaRTANVariant", "convert_for_export", "convert_for_inference"]
