"""rtdetr-spartan: RT-DETR v1 with the SpaRTAN backbone as a first-class citizen."""

__version__ = "0.1.0"
