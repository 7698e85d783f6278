"""Shared pieces of the deployment tests: the two detector configs and small-model exports."""

from __future__ import annotations

from pathlib import Path

import torch

from rtdetr_spartan.deploy.export import DeployModel, ExportResult, export_onnx
from rtdetr_spartan.deploy.from_config import build_deploy_model, load_config, model_info_from_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "rtdetr"
R18_CONFIG = CONFIGS / "rtdetr_r18vd_6x_coco.yml"
SPARTAN_T_CONFIG = CONFIGS / "rtdetr_spartan_t_6x_coco.yml"


def spartan_t_config() -> tuple[Path, tuple[str, ...]]:
    """(config file, overrides) of the SpaRTAN-T detector (SpaRTAN-T backbone, R18 head)."""
    return SPARTAN_T_CONFIG, ()


def export_config(
    config: Path,
    overrides: tuple[str, ...] | list[str],
    path: Path,
    size: int,
    dynamic_batch: bool = True,
    dynamic_size: bool = False,
    seed: int = 0,
) -> tuple[DeployModel, ExportResult]:
    """Freshly initialised (seeded) deploy model of ``config`` and its export at ``size``."""
    torch.manual_seed(seed)
    cfg = load_config(config, overrides)
    module = build_deploy_model(cfg)
    info = model_info_from_config(cfg, (size, size), dynamic_batch=dynamic_batch, dynamic_size=dynamic_size)
    return module, export_onnx(module, path, info, verify=False)
