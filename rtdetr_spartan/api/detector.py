"""``Detector``: RT-DETR (any config of ``configs/rtdetr``) through the Python API.

A facade over the packages the tools run: training and evaluation are the solver's
(``rtdetr-spartan train`` / ``val``), prediction is the PyTorch deploy model behind the
deployment :class:`~rtdetr_spartan.deploy.Predictor`, export is ``export_from_config`` with its
check and verification (``rtdetr-spartan export``), INT8 is ``quantize_openvino``, measurement
is :func:`rtdetr_spartan.benchmark.latency.benchmark`, Grad-CAM is
:func:`rtdetr_spartan.visualize.run.visualize`.

    det = Detector("configs/rtdetr/rtdetr_r18vd_6x_coco.yml", epochs=12)
    det.train(data="datasets/my_yolo", batch_size=4, output_dir="runs/det")
    det.val()["AP"]
    for result in det.predict("images/", threshold=0.5): print(result.to_dict())
    det.export("model.onnx")
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from rtdetr_spartan.api.config import ModelConfig
from rtdetr_spartan.api.model import TaskModel
from rtdetr_spartan.api.results import Detections
from rtdetr_spartan.api.sources import ImageSource, SourceImage, is_video, iter_images, iter_video_frames
from rtdetr_spartan.benchmark.latency import benchmark
from rtdetr_spartan.deploy.from_config import export_from_config
from rtdetr_spartan.deploy.metadata import input_size_from_config
from rtdetr_spartan.deploy.openvino_runtime import IR_NAME, read_openvino_model, stored_model_info, write_ir
from rtdetr_spartan.deploy.predictor import Predictor
from rtdetr_spartan.deploy.quantize import (
    calibration_from_config,
    calibration_from_folder,
    quantize_openvino,
    read_model_info,
)
from rtdetr_spartan.deploy.torch_predictor import TorchPredictor
from rtdetr_spartan.visualize.run import visualize

__all__ = ["EXPORT_FORMATS", "Detector"]

logger = logging.getLogger(__name__)

EXPORT_FORMATS = ("onnx", "openvino")


class Detector(TaskModel):
    """An RT-DETR detector built from a YAML ``config`` with ``-u``-style ``override_strings``
    (``"train_dataloader.batch_size=4"``) and keyword ``overrides`` (dotted keys as
    ``**{"HybridEncoder.hidden_dim": 128}``); ``backbone_weights``: a classifier checkpoint
    (``rtdetr-spartan pretrain``) for the backbone, set as its ``pretrained`` weights.
    :meth:`load` rebuilds one from a training checkpoint."""

    task = "detection"

    def __init__(
        self,
        config: str | Path | ModelConfig,
        *override_strings: str,
        backbone_weights: str | Path | None = None,
        **overrides: Any,
    ) -> None:
        super().__init__(config, *override_strings, **overrides)
        if backbone_weights is not None:
            backbone = self.config.resolve().yaml_cfg.get("RTDETR", {}).get("backbone")
            if not isinstance(backbone, str):
                raise ValueError(f"{config}: RTDETR.backbone names no registered backbone to load weights into")
            self.config.update({backbone: {"pretrained": str(backbone_weights)}})
        self._predictor: tuple[tuple[Any, ...], Predictor] | None = None

    def _val_metrics(self, stats: dict[str, Any]) -> dict[str, Any]:
        """The 12 COCO statistics by name, ``num_images`` and ``per_class`` {class name: AP}."""
        if not isinstance(stats.get("per_class"), list):
            return stats
        return {**stats, "per_class": {str(row["name"]): float(row["ap"]) for row in stats["per_class"]}}

    # ------------------------------------------------------------------------- prediction
    def predictor(self, device: str = "cpu") -> Predictor:
        """The model in deploy form (weights of :attr:`checkpoint`) behind the deployment
        :class:`~rtdetr_spartan.deploy.Predictor`; built once per checkpoint, config and device."""
        key = (self.checkpoint, repr(self.config.overrides), device)
        if self._predictor is None or self._predictor[0] != key:
            if self.checkpoint is None:
                logger.warning("Detector has no checkpoint: detections come from untrained weights")
            self._predictor = (key, TorchPredictor.from_config(self.config.resolve(), self.checkpoint, device=device))
        return self._predictor[1]

    def predict(
        self, source: ImageSource, threshold: float = 0.5, batch_size: int = 8, device: str = "cpu"
    ) -> list[Detections] | Iterator[Detections]:
        """Detections scoring >= ``threshold`` for every image of ``source``: a path, a folder
        (its images), a list of paths, a PIL image, an HWC RGB uint8 array, a tensor ([3, H, W] or
        [N, 3, H, W], float in [0, 1] or uint8), or a list of these -> one :class:`Detections`
        per image; a video file -> a generator of one per frame, decoded as it is consumed."""
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold is a score in [0, 1], got {threshold}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        predictor = self.predictor(device)
        if is_video(source):
            assert isinstance(source, (str, Path))
            return _batched(predictor, iter_video_frames(source), threshold, 1)
        return list(_batched(predictor, iter_images(source), threshold, batch_size))

    # ------------------------------------------------------------------------- deployment
    def export(
        self,
        path: str | Path = "model.onnx",
        format: str = "onnx",
        dynamic_size: bool = False,
        static: bool = False,
        int8: bool = False,
        calibration: str | Path | None = None,
        size: tuple[int, int] | None = None,
        opset: int = 17,
        simplify: bool = False,
        verify: bool = True,
        tolerance: float = 1e-3,
    ) -> Path:
        """Export as ``rtdetr-spartan export`` does (ONNX checked, and verified against PyTorch
        with onnxruntime) and return the model file.

        ``format="onnx"``: ``path`` is the ``.onnx`` file. ``format="openvino"``: ``path`` is a
        folder receiving ``model.onnx`` and the IR ``model.xml`` / ``.bin``; ``int8`` quantizes
        it with NNCF (``model_int8.xml``, as ``rtdetr-spartan quantize``) on the images of the
        folder ``calibration`` (default: the config's validation images). ``static``: a fixed
        batch of 1; ``dynamic_size``: symbolic height and width; ``size``: (H, W), default the
        config's ``eval_spatial_size``.
        """
        if format not in EXPORT_FORMATS:
            raise ValueError(f"format must be one of {EXPORT_FORMATS}, got {format!r}")
        if (int8 or calibration is not None) and format != "openvino":
            raise ValueError("int8 (and calibration) is an OpenVINO export: use format='openvino'")
        path = Path(path)
        onnx_path = path if format == "onnx" else path / "model.onnx"
        result = export_from_config(
            self.config.resolve(),
            onnx_path,
            checkpoint=self.checkpoint,
            input_size=size,
            opset=opset,
            dynamic_batch=not static,
            dynamic_size=dynamic_size,
            simplify=simplify,
            verify=verify,
            tolerance=tolerance,
        )
        if format == "onnx":
            return result.path
        model = read_openvino_model(result.path)
        ir = write_ir(model, path / IR_NAME, stored_model_info(result.path, model))
        if not int8:
            return ir
        if calibration is not None:
            images = calibration_from_folder(calibration)
        else:
            images = calibration_from_config(self.config.resolve().yaml_cfg, read_model_info(result.path))
        return quantize_openvino(result.path, images, path).path

    def benchmark(
        self,
        size: int | None = None,
        batch: int = 1,
        backend: str = "torch",
        threads: int | None = None,
        runs: int = 20,
        warmup: int = 5,
        device: str = "cpu",
        flops: bool = True,
    ) -> dict[str, Any]:
        """Latency (ms per batch), throughput, parameters and GFLOPs of this model on random
        ``size`` x ``size`` images (default: the config's evaluation size), as
        ``rtdetr-spartan benchmark`` measures them; ``backend``: torch, onnxruntime or openvino."""
        config = self.config.resolve()
        if size is None:
            size = _eval_size(config.yaml_cfg)
        result = benchmark(
            config,
            size=size,
            batch=batch,
            backend=backend,
            threads=threads,
            runs=runs,
            warmup=warmup,
            checkpoint=self.checkpoint,
            device=device,
            flops=flops,
        )
        return result.to_dict()

    def visualize(
        self,
        images: str | Path,
        output_dir: str | Path = "cam",
        layers: Sequence[str] | None = None,
        method: str = "gradcam",
        top_k: int = 5,
    ) -> list[Path]:
        """Grad-CAM of the top ``top_k`` detections and the backbone stages' feature maps for
        every image of ``images`` (a file or folder), as ``rtdetr-spartan visualize``; returns
        the PNGs written into ``output_dir``."""
        return visualize(
            self.config.resolve(), self.checkpoint, images, output_dir, tuple(layers or ()), method, top_k=top_k
        )


def _eval_size(cfg: dict[str, Any]) -> int:
    height, width = input_size_from_config(cfg)
    if height != width:
        raise ValueError(f"the config's eval_spatial_size is {height}x{width}; benchmark(size=N) measures N x N")
    return int(height)


def _batched(
    predictor: Predictor, images: Iterator[SourceImage], threshold: float, batch_size: int
) -> Iterator[Detections]:
    """Detections of ``images`` predicted ``batch_size`` at a time."""
    while True:
        chunk = list(itertools.islice(images, batch_size))
        if not chunk:
            return
        found = predictor.predict([image for image, _, _ in chunk], threshold)
        for (image, source, frame), detections in zip(chunk, found):
            yield Detections.from_detections(detections, image, source, frame)
