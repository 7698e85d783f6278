"""The Python API: :class:`Detector` and :class:`Classifier`, a facade over the solver,
deploy, benchmark and visualize packages (what the ``rtdetr-spartan`` subcommands run)."""

from rtdetr_spartan.api.classifier import Classifier
from rtdetr_spartan.api.detector import Detector
from rtdetr_spartan.api.results import Classification, Detections

__all__ = ["Classification", "Classifier", "Detections", "Detector"]
