"""Backbones; importing the package registers them (``PResNet``, ``SpaRTAN``, ``SpaRTANClassifier``).
SpaRTAN's inference and ONNX export forms come from ``rtdetr_spartan.nn.reparameterize``."""

from rtdetr_spartan.nn.backbones.presnet import PResNet
from rtdetr_spartan.nn.backbones.spartan import SpaRTAN, SpaRTANClassifier, SpaRTANVariant

__all__ = ["PResNet", "SpaRTAN", "SpaRTANClassifier", "SpaRTANVariant"]
