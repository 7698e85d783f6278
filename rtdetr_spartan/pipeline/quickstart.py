"""The whole pipeline on generated data, in one process: datasets -> SpaRTAN-T pretraining ->
RT-DETR training -> ONNX export and check -> COCO evaluation of the ONNX model -> annotated
pictures and latency -> training curves -> ``summary.json``.

    from rtdetr_spartan.pipeline import default_settings, run_quickstart
    summary = run_quickstart(default_settings("outputs/quickstart", "data", DET_CFG, CLS_CFG))
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Iterator

from rtdetr_spartan.deploy.evaluate import evaluate_predictor
from rtdetr_spartan.misc.plot import plot_training_curves
from rtdetr_spartan.pipeline.datasets import ensure_classification_dataset, ensure_detection_dataset
from rtdetr_spartan.pipeline.deployment import (
    agreement_on_images,
    annotate_images,
    export_detector,
    onnx_latency_ms,
    predictors,
    validation_images,
)
from rtdetr_spartan.pipeline.settings import QuickstartSettings
from rtdetr_spartan.pipeline.training import (
    DetectorResult,
    PretrainResult,
    detector_config,
    pretrain_backbone,
    train_detector,
)

__all__ = ["SUMMARY_FILE", "StageClock", "run_quickstart"]

logger = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
_RULE = "=" * 72


class StageClock:
    """Numbered stage headers in the log and the seconds each stage took."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, key: str, title: str) -> Iterator[None]:
        self.done += 1
        logger.info("%s\n[%d/%d] %s\n%s", _RULE, self.done, self.total, title, _RULE)
        start = time.perf_counter()
        yield
        self.seconds[key] = round(time.perf_counter() - start, 2)
        logger.info("[%d/%d] %s: done in %.1f s", self.done, self.total, title, self.seconds[key])


def _datasets(settings: QuickstartSettings) -> None:
    ensure_detection_dataset(
        settings.detection_data,
        settings.det_train,
        settings.det_val,
        settings.det_image_size,
        settings.seed,
        settings.det_max_objects,
    )
    if settings.pretrain_epochs > 0:
        ensure_classification_dataset(
            settings.classification_data, settings.cls_train, settings.cls_val, settings.cls_image_size, settings.seed
        )


def _deploy(settings: QuickstartSettings, detector: DetectorResult, clock: StageClock) -> dict[str, Any]:
    """Export, check, evaluate and demonstrate the ONNX model; returns its summary entries."""
    out = settings.output_dir
    val_folder = settings.detection_data / "val"
    cfg = detector_config(settings, pretrained=None)  # the weights come from the checkpoint
    with clock.stage("export", "export to ONNX and compare onnxruntime with PyTorch"):
        outcome = export_detector(cfg, detector.checkpoint, out / "model.onnx")
        torch_predictor, onnx_predictor = predictors(outcome, cfg)
        agreement = agreement_on_images(
            torch_predictor, onnx_predictor, validation_images(val_folder, max(settings.num_samples, 4))
        )
        logger.info(
            "onnxruntime vs PyTorch on validation images: %s (random inputs: max difference %s)",
            agreement.describe(),
            "n/a" if outcome.verify_diff is None else f"{outcome.verify_diff:.3g}",
        )
    with clock.stage("onnx_eval", "COCO evaluation of the ONNX model (onnxruntime)"):
        evaluator = evaluate_predictor(
            onnx_predictor, settings.detection_data / "annotations" / "instances_val.json", val_folder, batch_size=8
        )
        logger.info(
            "ONNX model: AP %.4f AP50 %.4f\n%s",
            evaluator.stats[0],
            evaluator.stats[1],
            evaluator.format_per_class_table(),
        )
    with clock.stage("demo", "onnxruntime on validation images: annotated pictures and latency"):
        pictures = annotate_images(
            onnx_predictor,
            validation_images(val_folder, settings.num_samples),
            out / "samples",
            settings.score_threshold,
        )
        latency = onnx_latency_ms(onnx_predictor, validation_images(val_folder, 1)[0], settings.latency_runs)
        logger.info("onnxruntime latency (batch 1, %dx%d): %.1f ms", *onnx_predictor.input_size, latency)
    return {
        "onnx_max_abs_diff": agreement.max_matched_diff,
        "onnx_matched_fraction": agreement.matched_fraction,
        "onnx_verify_diff": outcome.verify_diff,
        "onnx_ap": evaluator.stats[0],
        "onnx_ap50": evaluator.stats[1],
        "latency_ms": round(latency, 2),
        "input_size": list(onnx_predictor.input_size),
        "paths": {"onnx": str(outcome.path), "samples": [str(p) for p in pictures]},
    }


def _curves(detector: DetectorResult, pretrain: PretrainResult | None, out: Path) -> dict[str, str]:
    paths = {
        "detector_curve": str(
            plot_training_curves(detector.log, out / "detector_curve.png", "RT-DETR-SpaRTAN-T on generated shapes")
        )
    }
    if pretrain is not None:
        paths["pretrain_curve"] = str(
            plot_training_curves(pretrain.log, out / "pretrain_curve.png", "SpaRTAN-T classification pretraining")
        )
    return paths


def _summary(
    settings: QuickstartSettings,
    detector: DetectorResult,
    pretrain: PretrainResult | None,
    deploy: dict[str, Any],
    curves: dict[str, str],
    clock: StageClock,
    seconds: float,
) -> dict[str, Any]:
    paths = {
        "output_dir": str(settings.output_dir),
        "detection_data": str(settings.detection_data),
        "detector_checkpoint": str(detector.checkpoint),
        "detector_log": str(detector.log),
        **deploy.pop("paths"),
        **curves,
    }
    if pretrain is not None:
        paths.update(
            pretrain_checkpoint=str(pretrain.checkpoint), classification_data=str(settings.classification_data)
        )
    return {
        "ap": detector.stats[0],
        "ap50": detector.stats[1],
        "ap75": detector.stats[2],
        "per_class": detector.per_class,
        "best_ap": detector.best.get("value"),
        "best_epoch": detector.best.get("epoch"),
        "pretrain_top1": pretrain.top1 if pretrain is not None else None,
        **deploy,
        "seconds": round(seconds, 1),
        "stage_seconds": clock.seconds,
        "settings": {
            "seed": settings.seed,
            "det_train": settings.det_train,
            "det_val": settings.det_val,
            "cls_train": settings.cls_train,
            "pretrain_epochs": settings.pretrain_epochs,
            "detector_epochs": settings.detector_epochs,
        },
        "paths": paths,
    }


def _log_summary(summary: dict[str, Any], path: Path) -> None:
    paths = summary["paths"]
    logger.info(
        "%s\nquickstart finished in %.0f s\n"
        "  detector      AP %.3f  AP50 %.3f  (ONNX: AP %.3f  AP50 %.3f)\n"
        "  onnxruntime   max |diff| vs PyTorch %.2e, latency %.1f ms per image\n"
        "  model         %s\n  pictures      %s\n  curves        %s\n  summary       %s\n%s",
        _RULE,
        summary["seconds"],
        summary["ap"],
        summary["ap50"],
        summary["onnx_ap"],
        summary["onnx_ap50"],
        summary["onnx_max_abs_diff"],
        summary["latency_ms"],
        paths["onnx"],
        Path(paths["samples"][0]).parent if paths["samples"] else "-",
        ", ".join(paths[k] for k in ("detector_curve", "pretrain_curve") if k in paths),
        path,
        _RULE,
    )


def run_quickstart(settings: QuickstartSettings) -> dict[str, Any]:
    """Run every stage and write ``OUTPUT_DIR/summary.json``; returns its content."""
    start = time.perf_counter()
    pretraining = settings.pretrain_epochs > 0
    clock = StageClock(total=7 if pretraining else 6)
    settings.output_dir.mkdir(parents=True, exist_ok=True)
    with clock.stage("datasets", "generated datasets (detection, classification)"):
        _datasets(settings)
    pretrain = None
    if pretraining:
        with clock.stage(
            "pretrain", f"pretrain SpaRTAN-T on shapes classification ({settings.pretrain_epochs} epochs)"
        ):
            pretrain = pretrain_backbone(settings)
    source = "the pretrained backbone" if pretrain is not None else "scratch"
    with clock.stage("train", f"train RT-DETR-SpaRTAN-T from {source} ({settings.detector_epochs} epochs)"):
        detector = train_detector(settings, pretrain.checkpoint if pretrain is not None else None)
        logger.info("final detector: AP %.4f AP50 %.4f", detector.stats[0], detector.stats[1])
    deploy = _deploy(settings, detector, clock)
    with clock.stage("curves", "training curves"):
        curves = _curves(detector, pretrain, settings.output_dir)
    summary = _summary(settings, detector, pretrain, deploy, curves, clock, time.perf_counter() - start)
    path = settings.output_dir / SUMMARY_FILE
    path.write_text(json.dumps(summary, indent=2))
    _log_summary(summary, path)
    return summary
