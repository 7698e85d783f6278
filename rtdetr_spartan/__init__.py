"""rtdetr-spartan: RT-DETR v1 with the SpaRTAN backbone as a first-class citizen.

from rtdetr_spartan import Detector, Classifier
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Importing the subpackages registers every name a config can build (``type: AdamW``,
# ``RTDETR``, ``CocoDetection``, ...); core's registry itself knows no package.
from rtdetr_spartan import data, nn, optim, zoo

if TYPE_CHECKING:
    from rtdetr_spartan.api import Classifier, Detector

__all__ = ["Classifier", "Detector", "__version__", "data", "nn", "optim", "zoo"]

_API = ("Classifier", "Detector")


def __getattr__(name: str) -> Any:
    # The API imports the deploy, benchmark and visualize packages: loaded on first use only,
    # so that ``import rtdetr_spartan`` (and every tool) stays as fast as before.
    if name in _API:
        from rtdetr_spartan import api

        return getattr(api, name)
    raise AttributeError(f"module 'rtdetr_spartan' has no attribute {name!r}")
