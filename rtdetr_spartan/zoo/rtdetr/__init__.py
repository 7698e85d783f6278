"""RT-DETR detector parts; importing the package registers them."""

from rtdetr_spartan.zoo.rtdetr.criterion import SetCriterion
from rtdetr_spartan.zoo.rtdetr.decoder import RTDETRTransformer
from rtdetr_spartan.zoo.rtdetr.hybrid_encoder import HybridEncoder
from rtdetr_spartan.zoo.rtdetr.matcher import HungarianMatcher
from rtdetr_spartan.zoo.rtdetr.postprocessor import RTDETRPostProcessor
from rtdetr_spartan.zoo.rtdetr.rtdetr import RTDETR

__all__ = ["RTDETR", "HybridEncoder", "RTDETRTransformer", "HungarianMatcher", "SetCriterion", "RTDETRPostProcessor"]
