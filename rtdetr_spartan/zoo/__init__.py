"""Detector families; importing the package registers their parts."""

from rtdetr_spartan.zoo import rtdetr

__all__ = ["rtdetr"]
