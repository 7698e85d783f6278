"""Network building blocks and backbones."""

from rtdetr_spartan.nn import backbones

__all__ = ["backbones"]
