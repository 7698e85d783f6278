"""The PyTorch deploy model (model + postprocessor, ``DeployModel``) behind the :class:`Predictor`
interface, for comparing an export with its source and running without an export."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from rtdetr_spartan.core import YAMLConfig
from rtdetr_spartan.deploy.from_config import build_deploy_model, load_config, model_info_from_config
from rtdetr_spartan.deploy.metadata import ModelInfo
from rtdetr_spartan.deploy.predictor import GRAPH_INPUTS, Outputs, Predictor

__all__ = ["TorchPredictor"]


class TorchPredictor(Predictor):
    """``module`` (a ``DeployModel``: images [N, 3, H, W], sizes [N, 2] -> labels, boxes, scores)
    on ``device``, in eval mode; any batch."""

    def __init__(self, module: torch.nn.Module, info: ModelInfo, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.module = module.to(self.device).eval()
        self.info = info
        self.bind_graph(GRAPH_INPUTS, fixed_batch=None, sizes_are_float=False)

    @classmethod
    def from_config(
        cls,
        config: str | Path | YAMLConfig,
        checkpoint: str | Path | None = None,
        overrides: Sequence[str] = (),
        device: str | torch.device = "cpu",
    ) -> TorchPredictor:
        """The config's detector (weights from ``checkpoint``, EMA preferred) with its metadata."""
        cfg = load_config(config, overrides)
        return cls(build_deploy_model(cfg, checkpoint), model_info_from_config(cfg), device)

    def infer(self, images: np.ndarray, orig_sizes: np.ndarray) -> Outputs:
        with torch.inference_mode():
            outputs = self.module(
                torch.from_numpy(images).to(self.device), torch.from_numpy(orig_sizes).to(self.device)
            )
        labels, boxes, scores = (t.cpu().numpy() for t in outputs)
        return labels, boxes, scores
