"""Network building blocks and backbones; the classification criterion."""

from rtdetr_spartan.nn import backbones, criterion

__all__ = ["backbones", "criterion"]
