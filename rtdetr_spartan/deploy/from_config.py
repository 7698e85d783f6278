"""Build the deployable detector of a YAML config (optionally with trained weights) and export it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import torch

from rtdetr_spartan.core import YAMLConfig, parse_overrides
from rtdetr_spartan.deploy.export import DeployModel, ExportResult, export_onnx
from rtdetr_spartan.deploy.metadata import ModelInfo, categories_from_config, input_size_from_config
from rtdetr_spartan.misc.checkpoint import load_model_weights

__all__ = ["build_deploy_model", "export_from_config", "load_config", "model_info_from_config"]

logger = logging.getLogger(__name__)


def load_config(config: str | Path | YAMLConfig, overrides: Sequence[str] = ()) -> YAMLConfig:
    """The config file with ``key.sub=value`` overrides (``-u`` on the command line) merged in;
    a loaded ``YAMLConfig`` is used as it is (its overrides were merged when it was loaded)."""
    if isinstance(config, YAMLConfig):
        if overrides:
            raise ValueError(f"overrides {list(overrides)} given with a loaded config: merge them when loading it")
        return config
    return YAMLConfig(config, **parse_overrides(overrides))


def build_deploy_model(cfg: YAMLConfig, checkpoint: str | Path | None = None) -> DeployModel:
    """A fresh model + postprocessor of ``cfg`` in deploy form; weights from ``checkpoint``
    (EMA weights when the checkpoint has them), else the config's initialisation."""
    model = cfg.build("model")
    if checkpoint is not None:
        load_model_weights(model, checkpoint, strict=True, expect_task="detection", purpose="a detector (-r)")
    else:
        logger.warning("no checkpoint given: using freshly initialised weights")
    return DeployModel(model, cfg.build("postprocessor")).eval()


def model_info_from_config(
    cfg: YAMLConfig, input_size: tuple[int, int] | None = None, dynamic_batch: bool = True, dynamic_size: bool = False
) -> ModelInfo:
    """Metadata for the config's model: classes and category ids, input size (default: the
    config's ``eval_spatial_size``)."""
    label_to_category, names = categories_from_config(cfg.yaml_cfg)
    size = input_size or input_size_from_config(cfg.yaml_cfg)
    extra = {"config": cfg.path.name}
    return ModelInfo(
        input_size=(int(size[0]), int(size[1])),
        num_classes=int(cfg.yaml_cfg.get("num_classes", 80)),
        label_to_category=label_to_category,
        class_names=names,
        remap_mscoco_category=bool(cfg.yaml_cfg.get("remap_mscoco_category", False)),
        dynamic_batch=dynamic_batch,
        dynamic_size=dynamic_size,
        extra=extra,
    )


def export_from_config(
    config: str | Path | YAMLConfig,
    output: str | Path,
    checkpoint: str | Path | None = None,
    overrides: Sequence[str] = (),
    input_size: tuple[int, int] | None = None,
    opset: int = 17,
    dynamic_batch: bool = True,
    dynamic_size: bool = False,
    simplify: bool = False,
    check: bool = True,
    verify: bool = True,
    tolerance: float = 1e-3,
    orig_size_dtype: torch.dtype = torch.int64,
) -> ExportResult:
    """Build, load, export, check and verify in one call (what ``tools/export_onnx.py`` runs)."""
    cfg = load_config(config, overrides)
    module = build_deploy_model(cfg, checkpoint)
    info = model_info_from_config(cfg, input_size, dynamic_batch, dynamic_size)
    if checkpoint is not None:
        info.extra["checkpoint"] = Path(checkpoint).name
    return export_onnx(
        module,
        output,
        info,
        opset=opset,
        simplify=simplify,
        check=check,
        verify=verify,
        tolerance=tolerance,
        orig_size_dtype=orig_size_dtype,
    )
