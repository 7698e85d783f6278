"""Backbones; importing the package registers them (``PResNet``, ``SpaRTAN``, ``SpaRTANClassifier``)."""

from rtdetr_spartan.nn.backbones.presnet import PResNet
from rtdetr_spartan.nn.backbones.spartan import SpaRTAN, SpaRTANClassifier

__all__ = ["PResNet", "SpaRTAN", "SpaRTANClassifier"]
