"""Network building blocks and backbones; the classification criterion and postprocessor."""

from rtdetr_spartan.nn import backbones, criterion, postprocessor

__all__ = ["backbones", "criterion", "postprocessor"]
