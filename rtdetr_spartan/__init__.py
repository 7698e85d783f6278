"""rtdetr-spartan: RT-DETR v1 with the SpaRTAN backbone as a first-class citizen."""

__version__ = "0.1.0"

# Importing the subpackages registers every name a config can build (``type: AdamW``,
# ``RTDETR``, ``CocoDetection``, ...); core's registry itself knows no package.
from rtdetr_spartan import data, nn, optim, zoo

__all__ = ["__version__", "data", "nn", "optim", "zoo"]
