"""Training stages of the quickstart: SpaRTAN-T classification pretraining and RT-DETR training,
both through the solvers in this process (as ``tools/pretrain.py`` and ``tools/train.py`` run them).
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rtdetr_spartan.core import YAMLConfig, merge_dict, parse_overrides
from rtdetr_spartan.pipeline.settings import QuickstartSettings
from rtdetr_spartan.solver import build_solver

__all__ = [
    "DetectorResult",
    "PretrainResult",
    "detector_config",
    "pretrain_backbone",
    "pretrain_config",
    "train_detector",
]

logger = logging.getLogger(__name__)

# The detector sees images in [0, 1] without mean/std (RT-DETR's convention); the backbone is
# pretrained on the same input statistics so that its first layers need no re-learning.
IDENTITY_NORMALIZATION: dict[str, list[float]] = {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}
# A few epochs of pretraining learn fastest from plain cross-entropy on lightly augmented crops:
# MixUp/CutMix, RandAugment and erasing pay off over hundreds of epochs, not a handful.
SHORT_PRETRAINING: dict[str, Any] = {
    "train_dataloader": {
        "collate_fn": "classification_collate_fn",
        "dataset": {"transforms": {"randaugment_magnitude": None, "random_erasing": 0.0}},
    }
}


@dataclass(frozen=True)
class PretrainResult:
    """``checkpoint``: the best classifier (top-1); ``top1`` in percent; ``log``: log.txt."""

    checkpoint: Path
    top1: float
    epoch: int
    log: Path


@dataclass(frozen=True)
class DetectorResult:
    """``checkpoint``: the final weights (EMA when on); ``stats``: its 12 COCO numbers."""

    checkpoint: Path
    stats: list[float]
    per_class: list[dict[str, Any]]
    best: dict[str, Any]
    log: Path


def _config(path: Path, overrides: dict[str, Any], extra: tuple[str, ...]) -> YAMLConfig:
    if not path.is_file():
        raise FileNotFoundError(f"config {path} does not exist (run from the repository root or pass the config path)")
    return YAMLConfig(path, **merge_dict(overrides, parse_overrides(extra)))


def _fresh(output_dir: Path) -> None:
    """Start a stage in an empty folder: its log.txt and eval files must describe this run only."""
    if output_dir.is_dir():
        logger.info("removing the previous run's %s", output_dir)
        shutil.rmtree(output_dir)


def _runtime(settings: QuickstartSettings, output_dir: Path, epochs: int) -> dict[str, Any]:
    runtime: dict[str, Any] = {"output_dir": str(output_dir), "seed": settings.seed, "epochs": epochs}
    if settings.device:
        runtime["device"] = settings.device
    return runtime


def pretrain_config(settings: QuickstartSettings) -> YAMLConfig:
    """The classification config on the generated ImageFolder set, with [0, 1] inputs."""
    root = settings.classification_data
    runtime = merge_dict(
        _runtime(settings, settings.output_dir / "pretrain", settings.pretrain_epochs), SHORT_PRETRAINING
    )
    overrides = merge_dict(
        runtime,
        {
            "train_dataloader": {
                "dataset": {
                    "root": str(root / "train"),
                    "transforms": {"size": settings.cls_image_size, **IDENTITY_NORMALIZATION},
                }
            },
            "val_dataloader": {
                "dataset": {
                    "root": str(root / "val"),
                    "transforms": {
                        "resize": settings.cls_image_size,
                        "crop": settings.cls_image_size,
                        **IDENTITY_NORMALIZATION,
                    },
                }
            },
        },
    )
    return _config(settings.pretrain_config, overrides, settings.pretrain_overrides)


def pretrain_backbone(settings: QuickstartSettings) -> PretrainResult:
    """Train the SpaRTAN-T classifier; its best checkpoint initialises the detector's backbone."""
    cfg = pretrain_config(settings)
    if cfg.task != "classification":
        raise ValueError(f"{settings.pretrain_config}: task is '{cfg.task}', pretraining needs classification")
    _fresh(cfg.output_dir)
    best = build_solver(cfg).fit()["best"]
    checkpoint = cfg.output_dir / "best.pth"
    if not checkpoint.is_file():
        raise RuntimeError(f"pretraining finished without writing {checkpoint}")
    logger.info("pretraining: best top-1 %.2f%% at epoch %d -> %s", best["value"], best["epoch"], checkpoint)
    return PretrainResult(
        checkpoint=checkpoint, top1=float(best["value"]), epoch=int(best["epoch"]), log=cfg.output_dir / "log.txt"
    )


def detector_config(
    settings: QuickstartSettings, pretrained: Path | None, output_dir: Path | None = None
) -> YAMLConfig:
    """The detection config on the generated COCO set, its backbone from ``pretrained`` (or scratch)."""
    root = settings.detection_data
    ann = root / "annotations"
    output_dir = output_dir or settings.output_dir / "detector"
    overrides = merge_dict(
        _runtime(settings, output_dir, settings.detector_epochs),
        {
            "SpaRTAN": {"pretrained": str(pretrained) if pretrained is not None else None},
            **({"optimizer": {"lr": settings.detector_lr}} if settings.detector_lr is not None else {}),
            "train_dataloader": {
                "dataset": {"img_folder": str(root / "train"), "ann_file": str(ann / "instances_train.json")}
            },
            "val_dataloader": {
                "dataset": {"img_folder": str(root / "val"), "ann_file": str(ann / "instances_val.json")}
            },
        },
    )
    cfg = _config(settings.detection_config, overrides, settings.detector_overrides)
    if settings.detector_input_size is None:
        return cfg
    return YAMLConfig(cfg.path, **merge_dict(cfg.yaml_cfg, _input_size_overrides(cfg, settings.detector_input_size)))


def _resized_ops(ops: Any, size: int) -> Any:
    """``ops`` (a transforms list) with every ``Resize`` op resizing to ``size`` x ``size``."""
    if not isinstance(ops, list):
        return ops
    return [{**op, "size": [size, size]} if isinstance(op, dict) and op.get("type") == "Resize" else op for op in ops]


def _input_size_overrides(cfg: YAMLConfig, size: int) -> dict[str, Any]:
    """Overrides that make the detector train and evaluate at ``size`` x ``size`` pixels: the
    loaders' Resize ops and the encoder's and decoder's ``eval_spatial_size``."""
    if size % 32:
        raise ValueError(f"detector input size must be a multiple of 32 (the largest stride), got {size}")
    overrides: dict[str, Any] = {}
    for loader in ("train_dataloader", "val_dataloader"):
        ops = (((cfg.yaml_cfg.get(loader) or {}).get("dataset") or {}).get("transforms") or {}).get("ops")
        overrides[loader] = {"dataset": {"transforms": {"ops": _resized_ops(ops, size)}}}
    for section in ("HybridEncoder", "RTDETRTransformer"):
        if section in cfg.yaml_cfg:
            overrides[section] = {"eval_spatial_size": [size, size]}
    return overrides


def train_detector(settings: QuickstartSettings, pretrained: Path | None) -> DetectorResult:
    """Train RT-DETR-SpaRTAN-T; the last epoch's COCO evaluation describes the final weights."""
    cfg = detector_config(settings, pretrained)
    if cfg.task != "detection":
        raise ValueError(f"{settings.detection_config}: task is '{cfg.task}', expected detection")
    _fresh(cfg.output_dir)
    best = build_solver(cfg).fit()["best"]
    checkpoint = cfg.output_dir / "last.pth"
    summary_path = cfg.output_dir / "eval" / "summary.json"
    if not checkpoint.is_file() or not summary_path.is_file():
        raise RuntimeError(f"detector training finished without writing {checkpoint} and {summary_path}")
    summary = json.loads(summary_path.read_text())
    return DetectorResult(
        checkpoint=checkpoint,
        stats=[float(v) for v in summary["stats"]],
        per_class=list(summary.get("per_class", [])),
        best=dict(best),
        log=cfg.output_dir / "log.txt",
    )
